//! Front ports: the stable address of each service. The supervisor holds the
//! port for as long as it runs; this module accepts there and forwards to
//! whichever instance of the service is ready, waiting while none is.
//!
//! HTTP (HTTP/1.1 and h2c) is forwarded request by request, so a client's
//! keep-alive connection outlives the instance behind it: a restart is
//! invisible. Anything else is piped as TCP. The proxy owns no processes.

mod route;

pub use route::{Backend, Route};

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode, Version, header};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How long the first bytes of a connection are awaited to tell HTTP from
/// other TCP; a protocol where the server speaks first is piped after this.
const SNIFF_TIMEOUT: Duration = Duration::from_millis(300);

type Body = BoxBody<Bytes, hyper::Error>;

/// One front port.
#[derive(Debug)]
pub struct Front {
    pub service: String,
    pub listener: TcpListener,
    pub route: watch::Receiver<Route>,
    /// How long a request waits for a ready instance before a 503.
    pub ready_timeout: Duration,
}

struct Context {
    service: String,
    route: watch::Receiver<Route>,
    ready_timeout: Duration,
    http1: Client<HttpConnector, Incoming>,
    http2: Client<HttpConnector, Incoming>,
}

/// Serves `front` until `shutdown`.
pub async fn run(front: Front, shutdown: CancellationToken) {
    let context = Arc::new(Context {
        service: front.service,
        route: front.route,
        ready_timeout: front.ready_timeout,
        http1: Client::builder(TokioExecutor::new()).build_http(),
        http2: Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http(),
    });
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = front.listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // EMFILE and the like: the next accept may work.
                Err(_) => continue,
            },
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve_connection(stream, Arc::clone(&context)));
    }
}

async fn serve_connection(stream: TcpStream, context: Arc<Context>) {
    let mut head = [0u8; 16];
    let sniffed = match tokio::time::timeout(SNIFF_TIMEOUT, stream.peek(&mut head)).await {
        Ok(Ok(0)) | Ok(Err(_)) => return,
        Ok(Ok(n)) => &head[..n],
        Err(_) => &[][..],
    };
    if looks_like_http(sniffed) {
        let service =
            hyper::service::service_fn(move |request| forward(request, Arc::clone(&context)));
        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .await;
    } else {
        pipe(stream, &context).await;
    }
}

/// Whether a connection's first bytes start an HTTP/1 request or the h2c preface.
fn looks_like_http(head: &[u8]) -> bool {
    const STARTS: [&[u8]; 10] = [
        b"GET ",
        b"POST ",
        b"PUT ",
        b"DELETE ",
        b"HEAD ",
        b"OPTIONS ",
        b"PATCH ",
        b"CONNECT ",
        b"TRACE ",
        b"PRI * HTTP/2",
    ];
    !head.is_empty()
        && STARTS
            .iter()
            .any(|start| start.starts_with(head) || head.starts_with(start))
}

impl Context {
    /// The ready instance, waiting up to the timeout for one.
    async fn ready_backend(&self) -> Result<Backend, String> {
        let mut route = self.route.clone();
        let ready = tokio::time::timeout(
            self.ready_timeout,
            route.wait_for(|r| matches!(r, Route::Ready(_))),
        )
        .await;
        if let Ok(Ok(route)) = ready
            && let Route::Ready(backend) = &*route
        {
            return Ok(backend.clone());
        }
        let status = match &*self.route.borrow() {
            Route::Waiting(status) => status.to_string(),
            Route::Ready(_) => "ready".to_owned(),
        };
        Err(format!(
            "devmesh: service `{}` is not ready ({status}) after {:?} (hint: `cargo devmesh logs {}`)\n",
            self.service, self.ready_timeout, self.service
        ))
    }
}

async fn forward(
    mut request: Request<Incoming>,
    context: Arc<Context>,
) -> Result<Response<Body>, Infallible> {
    let backend = match context.ready_backend().await {
        Ok(backend) => backend,
        Err(message) => return Ok(plain(StatusCode::SERVICE_UNAVAILABLE, message)),
    };
    let lease = backend.drain.lease();
    let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
    *request.uri_mut() = format!("http://{}{path}", backend.addr)
        .parse()
        .expect("an address and a path make a URI");
    let client_upgrade = request
        .headers()
        .contains_key(header::UPGRADE)
        .then(|| hyper::upgrade::on(&mut request));
    let client = if request.version() == Version::HTTP_2 {
        &context.http2
    } else {
        &context.http1
    };
    let mut response = match client.request(request).await {
        Ok(response) => response,
        Err(e) => {
            let message = format!(
                "devmesh: service `{}` at {} did not answer: {e} (hint: `cargo devmesh logs {}`)\n",
                context.service, backend.addr, context.service
            );
            return Ok(plain(StatusCode::BAD_GATEWAY, message));
        }
    };
    if response.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_upgrade) = client_upgrade
    {
        let backend_upgrade = hyper::upgrade::on(&mut response);
        tokio::spawn(async move {
            let _lease = lease;
            if let (Ok(client), Ok(backend)) = tokio::join!(client_upgrade, backend_upgrade) {
                let _ = tokio::io::copy_bidirectional(
                    &mut TokioIo::new(client),
                    &mut TokioIo::new(backend),
                )
                .await;
            }
        });
    }
    Ok(response.map(BodyExt::boxed))
}

/// Pipes a non-HTTP connection to the ready instance.
async fn pipe(mut stream: TcpStream, context: &Context) {
    let Ok(backend) = context.ready_backend().await else {
        return;
    };
    let _lease = backend.drain.lease();
    if let Ok(mut upstream) = TcpStream::connect(backend.addr).await {
        let _ = tokio::io::copy_bidirectional(&mut stream, &mut upstream).await;
    }
}

fn plain(status: StatusCode, message: String) -> Response<Body> {
    let body = Full::new(Bytes::from(message))
        .map_err(|never| match never {})
        .boxed();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_http_from_other_protocols() {
        assert!(looks_like_http(b"GET / HTTP/1.1\r\n"));
        assert!(looks_like_http(b"PO"));
        assert!(looks_like_http(b"PRI * HTTP/2.0\r\n"));
        assert!(!looks_like_http(b"\x16\x03\x01"));
        assert!(!looks_like_http(b"*1\r\n$4\r\nPING"));
        assert!(!looks_like_http(b""));
    }
}
