//! Replay: a captured request sent again to the service's front port, as it
//! was or edited, so that it is captured like any other, marked as a replay.

use std::net::SocketAddr;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, header};
use hyper_util::rt::TokioIo;
use serde::Deserialize;

use crate::inspector::{EXCHANGE_HEADER, Exchange, Kind, REPLAY_HEADER};

/// Changes to make before sending the request again; all optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Edits {
    pub method: Option<String>,
    pub path: Option<String>,
    /// Replaces all headers when given.
    pub headers: Option<Vec<(String, String)>>,
    /// Replaces the body when given.
    pub body: Option<String>,
}

/// What the replay got.
#[derive(Debug, serde::Serialize)]
pub struct Replayed {
    pub status: u16,
    /// The id the replay was captured as.
    pub exchange: Option<u64>,
}

/// Headers that belong to one connection, not to the request.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "upgrade",
    "content-length",
    "host",
];

/// Sends `original`, with `edits`, to `front`; `replay_header` proves the
/// replay is the supervisor's ([`crate::inspector::Inspector::replay_header`]).
pub async fn replay(
    original: &Exchange,
    edits: Edits,
    front: SocketAddr,
    replay_header: String,
) -> Result<Replayed, String> {
    if original.kind != Kind::Http {
        return Err(format!(
            "exchange {} is {:?}, not HTTP: it cannot be replayed",
            original.id, original.kind
        ));
    }
    if edits.body.is_none() && original.request_body.truncated {
        return Err(format!(
            "exchange {} kept only {} of its body's {} bytes (hint: give the body to replay it)",
            original.id,
            original.request_body.bytes().len(),
            original.request_body.size
        ));
    }
    let method = edits.method.as_deref().unwrap_or(&original.method);
    let method = Method::from_bytes(method.as_bytes()).map_err(|_| format!("`{method}` is not an HTTP method"))?;
    let path = edits.path.unwrap_or_else(|| original.path.clone());
    if !path.starts_with('/') {
        return Err(format!("`{path}` is not a path (hint: it starts with `/`)"));
    }
    // Unless told otherwise, a replay starts a trace of its own.
    let headers = edits.headers.unwrap_or_else(|| {
        let mut headers = original.request_headers.pairs();
        headers.retain(|(name, _)| !name.eq_ignore_ascii_case("traceparent"));
        headers
    });
    let body = edits
        .body
        .map_or_else(|| original.request_body.bytes(), String::into_bytes);

    let mut request = Request::builder()
        .method(method)
        .uri(&path)
        .header(header::HOST, front.to_string());
    for (name, value) in headers
        .iter()
        .filter(|(n, _)| !HOP_BY_HOP.contains(&n.to_ascii_lowercase().as_str()))
    {
        request = request.header(name.as_str(), value.as_str());
    }
    let request = request
        .header(REPLAY_HEADER, replay_header)
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("the edited request is not valid: {e}"))?;

    let stream = tokio::net::TcpStream::connect(front)
        .await
        .map_err(|e| format!("could not reach the front port {front}: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("the replay failed: {e}"))?;
    let status = response.status().as_u16();
    let exchange = response
        .headers()
        .get(EXCHANGE_HEADER)
        .and_then(|v| v.to_str().ok()?.parse().ok());
    // Read the body to the end, so the capture completes.
    let _ = response.into_body().collect().await;
    Ok(Replayed { status, exchange })
}
