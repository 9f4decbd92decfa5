//! Services written in the test: served on a loopback port of their own,
//! and used by the mesh like a remote service (a front port, captured).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::{Buf, Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio_util::sync::CancellationToken;

type Boxed = http_body_util::combinators::UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;
type Answer = Pin<Box<dyn Future<Output = Response<Boxed>> + Send>>;

/// A handler: a request in, a response out.
pub(crate) type Handler = Arc<dyn Fn(Request<Incoming>) -> Answer + Send + Sync>;

/// What a `handler_fn` closure may answer.
pub trait Reply {
    fn into_response(self) -> Response<Full<Bytes>>;
}

impl Reply for Response<Full<Bytes>> {
    fn into_response(self) -> Response<Full<Bytes>> {
        self
    }
}

impl Reply for &'static str {
    fn into_response(self) -> Response<Full<Bytes>> {
        (200, self).into_response()
    }
}

impl Reply for String {
    fn into_response(self) -> Response<Full<Bytes>> {
        (200, self).into_response()
    }
}

impl Reply for (u16, &'static str) {
    fn into_response(self) -> Response<Full<Bytes>> {
        status(self.0, Bytes::from_static(self.1.as_bytes()))
    }
}

impl Reply for (u16, String) {
    fn into_response(self) -> Response<Full<Bytes>> {
        status(self.0, Bytes::from(self.1))
    }
}

fn status(status: u16, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response
}

impl Reply for serde_json::Value {
    fn into_response(self) -> Response<Full<Bytes>> {
        (200, self).into_response()
    }
}

impl Reply for (u16, serde_json::Value) {
    fn into_response(self) -> Response<Full<Bytes>> {
        let mut response = (self.0, self.1.to_string()).into_response();
        response.headers_mut().insert(
            "content-type",
            hyper::header::HeaderValue::from_static("application/json"),
        );
        response
    }
}

/// A tower service (an axum `Router`) as a handler.
pub(crate) fn tower<S, B>(service: S) -> Handler
where
    S: tower_service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    Arc::new(move |request| {
        let mut service = service.clone();
        Box::pin(async move {
            // A tower service is polled ready before it is called.
            if let Err(e) = std::future::poll_fn(|cx| service.poll_ready(cx)).await {
                return failed(e.into());
            }
            match service.call(request).await {
                Ok(response) => response.map(|body| {
                    body.map_frame(|frame| frame.map_data(|mut data| data.copy_to_bytes(data.remaining())))
                        .map_err(Into::into)
                        .boxed_unsync()
                }),
                Err(e) => failed(e.into()),
            }
        })
    })
}

/// A closure of a whole request as a handler.
pub(crate) fn function<F, Fut, R>(answer: F) -> Handler
where
    F: Fn(Request<Bytes>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = R> + Send + 'static,
    R: Reply,
{
    let answer = Arc::new(answer);
    Arc::new(move |request: Request<Incoming>| {
        let answer = Arc::clone(&answer);
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let body = match body.collect().await {
                Ok(body) => body.to_bytes(),
                Err(e) => return failed(e.into()),
            };
            let response = answer(Request::from_parts(parts, body)).await.into_response();
            response.map(|body| body.map_err(|never| match never {}).boxed_unsync())
        })
    })
}

/// A 500 that says what went wrong in the handler.
fn failed(error: Box<dyn std::error::Error + Send + Sync>) -> Response<Boxed> {
    let body = Full::new(Bytes::from(format!("the test's handler failed: {error}\n")));
    let mut response = Response::new(body.map_err(|never: Infallible| match never {}).boxed_unsync());
    *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    response
}

/// Serves `handler` on a loopback port of its own until `shutdown`; its
/// address.
pub(crate) async fn serve(handler: Handler, shutdown: CancellationToken) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let socket = tokio::select! {
                () = shutdown.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok((socket, _)) => socket,
                    Err(_) => continue,
                },
            };
            let handler = Arc::clone(&handler);
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let answer = handler(request);
                    async move { Ok::<_, Infallible>(answer.await) }
                });
                let builder = auto::Builder::new(TokioExecutor::new());
                let connection = builder.serve_connection(TokioIo::new(socket), service);
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    _ = connection => {}
                }
            });
        }
    });
    Ok(addr)
}
