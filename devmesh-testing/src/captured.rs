//! A service as it was captured: a stand-in that answers each request
//! with what the inspector saw it answer (`MeshBuilder::stand_in`), and a
//! request sent to a service as a caller from outside sends it
//! (`Mesh::send`). `cargo devmesh traffic --as-test` writes tests of both.

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use http_body::{Body, Frame};
use http_body_util::BodyExt;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::handler::Handler;

/// One answer of a stand-in: to the request `method path`, `status`, with
/// headers, a body and trailers (gRPC's status travels there).
#[derive(Debug, Clone)]
pub struct Captured {
    method: String,
    path: String,
    status: u16,
    headers: Vec<(String, String)>,
    body: Bytes,
    trailers: Vec<(String, String)>,
}

impl Captured {
    /// Answers `method path` (with its query, if the capture had one) with
    /// `status` and no body.
    pub fn answer(method: &str, path: &str, status: u16) -> Captured {
        Captured {
            method: method.to_ascii_uppercase(),
            path: path.to_owned(),
            status,
            headers: Vec::new(),
            body: Bytes::new(),
            trailers: Vec::new(),
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Captured {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn body(mut self, body: impl Into<Bytes>) -> Captured {
        self.body = body.into();
        self
    }

    /// Sent after the body (HTTP/2 and chunked HTTP/1 carry them).
    pub fn trailer(mut self, name: &str, value: &str) -> Captured {
        self.trailers.push((name.to_owned(), value.to_owned()));
        self
    }

    fn route(&self) -> &str {
        route(&self.path)
    }

    fn response(&self) -> Response<Frames> {
        let mut response = Response::new(Frames {
            data: Some(self.body.clone()).filter(|b| !b.is_empty()),
            trailers: Some(header_map(&self.trailers)).filter(|t| !t.is_empty()),
        });
        *response.status_mut() = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        *response.headers_mut() = header_map(&self.headers);
        response
    }
}

/// The path without its query.
fn route(path: &str) -> &str {
    path.split('?').next().unwrap_or_default()
}

/// Headers whose name or value is no header's are left out: a capture
/// holds only what went on the wire, so there are none.
fn header_map(pairs: &[(String, String)]) -> HeaderMap {
    pairs
        .iter()
        .filter_map(|(name, value)| {
            Some((
                HeaderName::from_bytes(name.as_bytes()).ok()?,
                HeaderValue::from_str(value).ok()?,
            ))
        })
        .collect()
}

/// A stand-in answering `answers`: a request gets the first answer not yet
/// given to its method and its path with query (or, when the capture has
/// none of those, its path alone); once all are given, the last one
/// again. One with no answer gets a 404 that says what the capture has.
pub(crate) fn stand_in(name: String, answers: Vec<Captured>) -> Handler {
    let answers = Arc::new(answers);
    let given: Arc<Mutex<HashSet<usize>>> = Arc::default();
    Arc::new(move |request: Request<Incoming>| {
        let (answers, given, name) = (Arc::clone(&answers), Arc::clone(&given), name.clone());
        Box::pin(async move {
            // An HTTP/2 request's URI has a scheme and authority too.
            let path = request.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned();
            let method = request.method().as_str();
            let fits = |same: &dyn Fn(&Captured) -> bool| -> Vec<usize> {
                let fit = answers
                    .iter()
                    .enumerate()
                    .filter(|(_, a)| a.method == method && same(a));
                fit.map(|(i, _)| i).collect()
            };
            // Answers to this path and query if the capture has any, else
            // to this path with any query.
            let exact = fits(&|a| a.path == path);
            let candidates = if exact.is_empty() {
                fits(&|a| a.route() == route(&path))
            } else {
                exact
            };
            let chosen = {
                let mut given = given.lock().unwrap_or_else(|e| e.into_inner());
                let next = candidates
                    .iter()
                    .find(|i| !given.contains(i))
                    .or(candidates.last())
                    .copied();
                given.extend(next);
                next
            };
            match chosen {
                Some(i) => answers[i]
                    .response()
                    .map(|body| body.map_err(|never| match never {}).boxed_unsync()),
                None => {
                    let known: Vec<String> = answers.iter().map(|a| format!("{} {}", a.method, a.path)).collect();
                    let text = format!(
                        "devmesh: the capture of `{name}` has no answer to {method} {path}; it has {}\n",
                        known.join(", ")
                    );
                    let mut response = Response::new(
                        http_body_util::Full::new(Bytes::from(text))
                            .map_err(|never| match never {})
                            .boxed_unsync(),
                    );
                    *response.status_mut() = StatusCode::NOT_FOUND;
                    response
                }
            }
        })
    })
}

/// A body that is a few frames: its data, then its trailers.
pub(crate) struct Frames {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let frame = match self.data.take() {
            Some(data) => Frame::data(data),
            None => match self.trailers.take() {
                Some(trailers) => Frame::trailers(trailers),
                None => return Poll::Ready(None),
            },
        };
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }
}

/// What a service answered a request [`Mesh::send`](crate::Mesh::send)
/// sent.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// Sent after the body (gRPC's `grpc-status`, say).
    pub trailers: HeaderMap,
}

impl Answer {
    /// The body as text (bytes that are not UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON, when it is.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// A header's value, or a trailer's.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .or_else(|| self.trailers.get(name))
            .and_then(|v| v.to_str().ok())
    }
}

/// Sends `request` to `addr` on a connection of its own: HTTP/2 without
/// TLS (as gRPC goes) when its version says so, else HTTP/1.1.
pub(crate) async fn send(addr: SocketAddr, request: Request<Bytes>) -> Result<Answer, String> {
    let (mut parts, body) = request.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("could not connect to {addr}: {e}"))?;
    let io = TokioIo::new(stream);
    let body = http_body_util::Full::new(body);
    let response = if parts.version == Version::HTTP_2 {
        parts.uri = format!("http://{addr}{path}")
            .parse()
            .map_err(|e| format!("{path}: {e}"))?;
        let (mut sender, connection) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        sender.send_request(Request::from_parts(parts, body)).await
    } else {
        parts.uri = path.parse().map_err(|e| format!("{path}: {e}"))?;
        if !parts.headers.contains_key(hyper::header::HOST) {
            let host = HeaderValue::from_str(&addr.to_string()).map_err(|e| e.to_string())?;
            parts.headers.insert(hyper::header::HOST, host);
        }
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        sender.send_request(Request::from_parts(parts, body)).await
    };
    let (parts, body) = response.map_err(|e| e.to_string())?.into_parts();
    let collected = body.collect().await.map_err(|e| format!("the answer's body: {e}"))?;
    Ok(Answer {
        status: parts.status.as_u16(),
        headers: parts.headers,
        trailers: collected.trailers().cloned().unwrap_or_default(),
        body: collected.to_bytes(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str, version: Version) -> Request<Bytes> {
        Request::get(path).version(version).body(Bytes::new()).unwrap()
    }

    #[tokio::test]
    async fn a_stand_in_answers_as_captured_over_either_http() {
        let answers = vec![
            Captured::answer("GET", "/stock?item=tea", 200).body("tea: 3"),
            Captured::answer("GET", "/stock?item=tea", 200).body("tea: 2"),
            Captured::answer("GET", "/stock?item=cake", 200).body("cake: 1"),
            Captured::answer("POST", "/greet.Greeter/SayHello", 200)
                .header("content-type", "application/grpc")
                .body(Bytes::from_static(b"\x00\x00\x00\x00\x00"))
                .trailer("grpc-status", "0"),
        ];
        let shutdown = tokio_util::sync::CancellationToken::new();
        let addr = crate::handler::serve(stand_in("stock".to_owned(), answers), shutdown.clone())
            .await
            .unwrap();
        let text = |answer: Answer| (answer.status, answer.text());
        for expected in ["tea: 3", "tea: 2", "tea: 2"] {
            let answer = send(addr, get("/stock?item=tea", Version::HTTP_11)).await.unwrap();
            assert_eq!(
                text(answer),
                (200, expected.to_owned()),
                "its own query's answers, in order"
            );
        }
        // A query the capture has not: the path's first answer not given.
        let answer = send(addr, get("/stock?item=pie", Version::HTTP_11)).await.unwrap();
        assert_eq!(text(answer), (200, "cake: 1".to_owned()));
        let mut grpc = Request::post("/greet.Greeter/SayHello")
            .version(Version::HTTP_2)
            .body(Bytes::from_static(b"\x00\x00\x00\x00\x00"))
            .unwrap();
        grpc.headers_mut()
            .insert("content-type", HeaderValue::from_static("application/grpc"));
        let answer = send(addr, grpc).await.unwrap();
        assert_eq!(answer.status, 200);
        assert_eq!(answer.header("grpc-status"), Some("0"));
        let answer = send(addr, get("/nothing", Version::HTTP_2)).await.unwrap();
        assert_eq!(answer.status, 404);
        assert!(
            answer
                .text()
                .contains("has no answer to GET /nothing; it has GET /stock?item=tea"),
            "{}",
            answer.text()
        );
        shutdown.cancel();
    }
}
