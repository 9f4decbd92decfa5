//! What the shop's services share: serving where `cargo devmesh run` says,
//! and calling each other by name through `devmesh::discover`, passing each
//! request's trace on (`devmesh::trace`) so the inspector links every call
//! to the request that made it.

use std::sync::LazyLock;

use axum::Router;
use axum::http::StatusCode;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Serves `app` on the socket devmesh hands this process, until SIGTERM or
/// Ctrl-C; requests in flight then finish before the process exits.
pub async fn serve(app: Router) {
    let listener = devmesh::listener().await.unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(1)
    });
    // Its own socket's address is no one's business: callers use the front
    // port, which `cargo devmesh ps` shows.
    let name = std::env::var("DEVMESH_SERVICE").unwrap_or_else(|_| "service".into());
    println!("{name} serving");
    axum::serve(listener, app.layer(devmesh::trace::TraceLayer))
        .with_graceful_shutdown(async {
            let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("SIGTERM can be handled");
            tokio::select! {
                _ = terminate.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        })
        .await
        .expect("the server runs");
}

static CLIENT: LazyLock<Client<HttpConnector, Full<Bytes>>> =
    LazyLock::new(|| Client::builder(TokioExecutor::new()).build_http());

/// A failed call to another service, as the caller answers it.
#[derive(Debug)]
pub struct CallError(pub StatusCode, pub String);

impl axum::response::IntoResponse for CallError {
    fn into_response(self) -> axum::response::Response {
        (self.0, self.1).into_response()
    }
}

/// POSTs `body` as JSON to `path` of `service`, found by name; a 504 if it
/// has not answered within `timeout` (the shop's tests slow payments down
/// past orders' timeout).
pub async fn post_json<T: DeserializeOwned>(
    service: &str,
    path: &str,
    body: &impl Serialize,
    timeout: std::time::Duration,
) -> Result<T, CallError> {
    let bad_gateway = |e: &dyn std::fmt::Display| CallError(StatusCode::BAD_GATEWAY, format!("{service}: {e}"));
    let endpoint = devmesh::discover_async(service).await.map_err(|e| bad_gateway(&e))?;
    let mut request = hyper::Request::post(endpoint.join(path))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            serde_json::to_vec(body).expect("JSON serializes"),
        )))
        .expect("a valid request");
    devmesh::trace::inject(request.headers_mut());
    let response = tokio::time::timeout(timeout, CLIENT.request(request))
        .await
        .map_err(|_| {
            CallError(
                StatusCode::GATEWAY_TIMEOUT,
                format!("{service} did not answer within {} s", timeout.as_secs()),
            )
        })?
        .map_err(|e| bad_gateway(&e))?;
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| bad_gateway(&e))?
        .to_bytes();
    if !status.is_success() {
        return Err(CallError(status, String::from_utf8_lossy(&bytes).into_owned()));
    }
    serde_json::from_slice(&bytes).map_err(|e| bad_gateway(&e))
}
