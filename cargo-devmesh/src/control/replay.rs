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

    // An HTTP/2 exchange (gRPC's) is replayed over HTTP/2: a gRPC server
    // answers nothing else. h2 names scheme and authority in the URI.
    let http2 = original.version == "HTTP/2.0";
    let uri = if http2 {
        format!("http://{front}{path}")
    } else {
        path.clone()
    };
    let mut request = Request::builder().method(method).uri(&uri);
    if !http2 {
        request = request.header(header::HOST, front.to_string());
    }
    // `te: trailers` is the one `te` HTTP/2 allows, and gRPC servers want it.
    let kept = |name: &str, value: &str| {
        let name = name.to_ascii_lowercase();
        !HOP_BY_HOP.contains(&name.as_str()) || (http2 && name == "te" && value.eq_ignore_ascii_case("trailers"))
    };
    for (name, value) in headers.iter().filter(|(n, v)| kept(n, v)) {
        request = request.header(name.as_str(), value.as_str());
    }
    let request = request
        .header(REPLAY_HEADER, replay_header)
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("the edited request is not valid: {e}"))?;

    let stream = tokio::net::TcpStream::connect(front)
        .await
        .map_err(|e| format!("could not reach the front port {front}: {e}"))?;
    let response = if http2 {
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        sender.send_request(request).await
    } else {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        sender.send_request(request).await
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspector::{Body, Exchange, Headers};

    /// A gRPC call is replayed over HTTP/2, body and content type as they were.
    #[tokio::test]
    async fn an_http2_exchange_is_replayed_over_http2() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let front = listener.local_addr().unwrap();
        let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                let seen_tx = seen_tx.clone();
                async move {
                    let version = request.version();
                    let content_type = request.headers()["content-type"].clone();
                    assert_eq!(request.headers()["te"], "trailers");
                    let body = request.into_body().collect().await.unwrap().to_bytes();
                    let _ = seen_tx.send((version, content_type, body));
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::new())))
                }
            });
            let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
        let mut original = Exchange::begun("orders".into(), "gateway".into(), Kind::Http);
        original.method = "POST".into();
        original.path = "/shop.Orders/Get".into();
        original.version = "HTTP/2.0";
        original.request_headers = Headers::from_text("content-type: application/grpc\nte: trailers\n".into());
        original.request_body = Body::new(vec![0, 0, 0, 0, 2, 8, 1], 7, false);
        let replayed = replay(&original, Edits::default(), front, "1 key".into())
            .await
            .unwrap();
        assert_eq!(replayed.status, 200);
        let (version, content_type, body) = seen.recv().await.unwrap();
        assert_eq!(version, hyper::Version::HTTP_2);
        assert_eq!(content_type, "application/grpc");
        assert_eq!(&body[..], [0, 0, 0, 0, 2, 8, 1]);
    }
}
