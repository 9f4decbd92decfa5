//! Readiness checks: is a new instance able to serve yet?

use std::net::SocketAddr;
use std::time::Duration;

use devmesh::config::Readiness;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long one check may take before it counts as "not yet".
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// The pause between checks grows to this.
const MAX_PAUSE: Duration = Duration::from_millis(200);

/// Waits until the instance at `addr` passes `check`. Never gives up: the
/// caller races it against the process exiting.
pub async fn wait(addr: SocketAddr, check: &Readiness) {
    let mut pause = Duration::from_millis(5);
    while !answers(addr, check).await {
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

/// Whether the instance at `addr` passes `check` within [`CHECK_TIMEOUT`].
pub async fn answers(addr: SocketAddr, check: &Readiness) -> bool {
    tokio::time::timeout(CHECK_TIMEOUT, passes(addr, check)).await == Ok(true)
}

/// Responses are read to their end, at most this much of them.
const MAX_RESPONSE: usize = 1024 * 1024;

async fn passes(addr: SocketAddr, check: &Readiness) -> bool {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return false;
    };
    let path = match check {
        Readiness::Tcp => return true,
        Readiness::Http(path) => path.as_str(),
        _ => devmesh::config::RESPONDS_PATH,
    };
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: devmesh-readiness\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    // The whole response is read (to its length, else to the service's
    // close, which it was asked for): closing on unread bytes would reset
    // the connection, and a service still writing then logs an error
    // (Python's `http.server` prints a `ConnectionResetError` traceback).
    let mut response = Vec::with_capacity(1024);
    let mut chunk = [0u8; 8 * 1024];
    let mut status = None;
    while response.len() < MAX_RESPONSE {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => response.extend_from_slice(&chunk[..n]),
        }
        if status.is_none() {
            status = head_of(&response);
        }
        if let Some((_, Some(whole))) = status
            && response.len() >= whole
        {
            break;
        }
    }
    let Some((status, _)) = status else {
        // An HTTP/2-only server (tonic, a gRPC server) answers HTTP/1 with
        // its SETTINGS frame: it serves. Its health path is asked over h2c;
        // without one, the standard gRPC health service, when it has it.
        return speaks_h2(&response)
            && match check {
                Readiness::Http(path) => h2_get_succeeds(addr, path).await,
                _ => grpc_health_allows(addr).await,
            };
    };
    match check {
        Readiness::Http(_) => (200..300).contains(&status),
        _ => true,
    }
}

/// Whether `bytes` start with an HTTP/2 SETTINGS frame on stream 0: a frame
/// header is a 24-bit length, type (4: SETTINGS), flags, a 31-bit stream.
fn speaks_h2(bytes: &[u8]) -> bool {
    bytes.len() >= 9 && bytes[3] == 0x04 && bytes[5..9] == [0, 0, 0, 0]
}

/// Whether `grpc.health.v1.Health/Check` does not say NOT_SERVING: a
/// server without the health service (UNIMPLEMENTED), or any other answer,
/// serves; one whose health service says it does not is not ready yet.
async fn grpc_health_allows(addr: SocketAddr) -> bool {
    use http_body_util::Full;
    /// `HealthCheckResponse.status` (field 1, a varint) NOT_SERVING, after
    /// gRPC's 5-byte message prefix.
    const NOT_SERVING: [u8; 2] = [0x08, 0x02];
    // An empty `HealthCheckRequest`: the server as a whole.
    let request = hyper::Request::post(format!("http://{addr}/grpc.health.v1.Health/Check"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(hyper::body::Bytes::from_static(&[0, 0, 0, 0, 0])));
    match h2_exchange(addr, request).await {
        Some((_, body)) => body.get(5..7) != Some(&NOT_SERVING[..]),
        None => false,
    }
}

/// `GET path` over h2c with prior knowledge returns 2xx.
async fn h2_get_succeeds(addr: SocketAddr, path: &str) -> bool {
    let request = hyper::Request::get(format!("http://{addr}{path}"))
        .header("user-agent", "devmesh-readiness")
        .body(http_body_util::Empty::<hyper::body::Bytes>::new());
    h2_exchange(addr, request)
        .await
        .is_some_and(|(status, _)| status.is_success())
}

/// Sends `request` over a new h2c connection (prior knowledge) to `addr`:
/// the answer's status and whole body, `None` when none came.
async fn h2_exchange<B>(
    addr: SocketAddr,
    request: Result<hyper::Request<B>, hyper::http::Error>,
) -> Option<(hyper::StatusCode, hyper::body::Bytes)>
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use http_body_util::BodyExt;
    let stream = TcpStream::connect(addr).await.ok()?;
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .ok()?;
    tokio::spawn(connection);
    let response = sender.send_request(request.ok()?).await.ok()?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    Some((status, body))
}

/// The status of a whole response head at the start of `bytes`, and the
/// length of head and body when `Content-Length` tells it.
fn head_of(bytes: &[u8]) -> Option<(u16, Option<usize>)> {
    let mut fields = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut fields);
    let httparse::Status::Complete(head) = response.parse(bytes).ok()? else {
        return None;
    };
    let length = response
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse::<usize>().ok());
    Some((response.code?, length.map(|l| head + l)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn answer_once(listener: &TcpListener, response: &'static [u8]) {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 1024];
        let _ = stream.read(&mut buf).await.unwrap();
        stream.write_all(response).await.unwrap();
    }

    #[tokio::test]
    async fn the_whole_answer_is_read_so_the_service_sees_no_reset() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let body = "x".repeat(200_000);
        let service = async {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf).await.unwrap();
            let response = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len());
            // Written in pieces, as a slow service does: a reset would fail one.
            for piece in response.as_bytes().chunks(10_000) {
                stream.write_all(piece).await.unwrap();
                tokio::task::yield_now().await;
            }
            stream.shutdown().await.unwrap();
            // The probe closes cleanly too: EOF, not a reset.
            assert_eq!(stream.read(&mut buf).await.unwrap(), 0);
        };
        let (ok, ()) = tokio::join!(passes(addr, &Readiness::Responds), service);
        assert!(ok);
    }

    #[tokio::test]
    async fn http_needs_2xx_responds_takes_any_answer() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let health = Readiness::Http("/health".into());
        let (ok, ()) = tokio::join!(
            passes(addr, &health),
            answer_once(&listener, b"HTTP/1.1 503 No\r\n\r\n")
        );
        assert!(!ok);
        let (ok, ()) = tokio::join!(
            passes(addr, &health),
            answer_once(&listener, b"HTTP/1.1 204 OK\r\n\r\n")
        );
        assert!(ok);
        let (ok, ()) = tokio::join!(
            passes(addr, &Readiness::Responds),
            answer_once(&listener, b"HTTP/1.1 404 Not Found\r\n\r\n")
        );
        assert!(ok);
    }

    /// An h2-only server, as tonic's: a SETTINGS frame to an HTTP/1
    /// request, and its health path over h2c.
    #[tokio::test]
    async fn an_http2_only_server_is_ready() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let service = hyper::service::service_fn(|request: hyper::Request<hyper::body::Incoming>| async move {
                    let status = if request.uri().path() == "/health" { 200 } else { 404 };
                    let mut response = hyper::Response::new(http_body_util::Empty::<hyper::body::Bytes>::new());
                    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                    Ok::<_, std::convert::Infallible>(response)
                });
                tokio::spawn(
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
                );
            }
        });
        assert!(answers(addr, &Readiness::Responds).await);
        assert!(answers(addr, &Readiness::Http("/health".into())).await);
        assert!(!answers(addr, &Readiness::Http("/missing".into())).await);
    }

    /// A gRPC server whose health service says NOT_SERVING is not ready;
    /// SERVING, or no health service at all, is.
    #[tokio::test]
    async fn the_grpc_health_service_is_asked_when_there_is_one() {
        for (answer, ready) in [(Some(2u8), false), (Some(1), true), (None, true)] {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move {
                loop {
                    let (stream, _) = listener.accept().await.unwrap();
                    let service =
                        hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| async move {
                            let body = match (request.uri().path(), answer) {
                                ("/grpc.health.v1.Health/Check", Some(status)) => vec![0, 0, 0, 0, 2, 0x08, status],
                                _ => Vec::new(),
                            };
                            let mut response =
                                hyper::Response::new(http_body_util::Full::new(hyper::body::Bytes::from(body)));
                            response
                                .headers_mut()
                                .insert("content-type", "application/grpc".parse().unwrap());
                            Ok::<_, std::convert::Infallible>(response)
                        });
                    tokio::spawn(
                        hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
                    );
                }
            });
            assert_eq!(answers(addr, &Readiness::Responds).await, ready, "{answer:?}");
        }
    }

    #[tokio::test]
    async fn a_closed_port_is_not_ready() {
        let addr = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        assert!(!passes(addr, &Readiness::Tcp).await);
    }
}
