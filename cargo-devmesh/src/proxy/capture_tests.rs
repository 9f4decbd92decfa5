//! Capture through a real front port: a backend served here, the proxy in
//! front of it, clients of each kind.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::testing::{CONNECTIONS, THREADS};
use super::{Backend, Route};
use crate::inspector::{Filter, Inspector, Kind};

/// A backend: `/echo` echoes the body, `/big` sends 1 MiB in chunks,
/// `/huge` 16 MiB (more than the kernel's socket buffers can hold unread),
/// `/ws` upgrades and echoes bytes, anything else says hello.
async fn backend() -> SocketAddr {
    counted_backend().await.0
}

/// [`backend`], and how many connections it has accepted.
async fn counted_backend() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(handle);
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, accepted)
}

type Body = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

async fn handle(mut request: Request<Incoming>) -> Result<Response<Body>, hyper::Error> {
    let full = |bytes: Bytes| Full::new(bytes).map_err(|never| match never {}).boxed();
    Ok(match request.uri().path() {
        "/echo" => {
            let body = request.into_body().collect().await?.to_bytes();
            Response::new(full(body))
        }
        // A gRPC answer: one message, then trailers saying NOT_FOUND.
        "/shop.Orders/Get" => {
            let mut trailers = hyper::HeaderMap::new();
            trailers.insert("grpc-status", "5".parse().unwrap());
            trailers.insert("grpc-message", "no such order".parse().unwrap());
            let frames = [
                Ok::<_, hyper::Error>(Frame::data(Bytes::from_static(b"\0\0\0\0\0"))),
                Ok(Frame::trailers(trailers)),
            ];
            let mut response = Response::new(BodyExt::boxed(StreamBody::new(futures_lite_iter(frames.into_iter()))));
            response
                .headers_mut()
                .insert("content-type", "application/grpc".parse().unwrap());
            response
        }
        path @ ("/big" | "/huge") => {
            let count = if path == "/big" { 16 } else { 256 };
            let chunks = (0..count).map(|_| Ok::<_, hyper::Error>(Frame::data(Bytes::from(vec![b'x'; 65536]))));
            Response::new(BodyExt::boxed(StreamBody::new(futures_lite_iter(chunks))))
        }
        "/ws" => {
            let upgrade = hyper::upgrade::on(&mut request);
            tokio::spawn(async move {
                let mut io = TokioIo::new(upgrade.await.unwrap());
                let mut buf = [0u8; 64];
                let n = io.read(&mut buf).await.unwrap();
                io.write_all(&buf[..n]).await.unwrap();
            });
            let mut response = Response::new(full(Bytes::new()));
            *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            response.headers_mut().insert("upgrade", "websocket".parse().unwrap());
            response.headers_mut().insert("connection", "upgrade".parse().unwrap());
            response
        }
        _ => Response::new(full(Bytes::from("hello"))),
    })
}

/// A stream over an iterator, without a futures crate.
fn futures_lite_iter<I: Iterator + Unpin>(iter: I) -> IterStream<I> {
    IterStream(iter)
}

struct IterStream<I>(I);

impl<I: Iterator + Unpin> futures_core::Stream for IterStream<I> {
    type Item = I::Item;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<I::Item>> {
        std::task::Poll::Ready(self.0.next())
    }
}

/// A front port for `backend`, capturing with `max_body`.
async fn front(backend: SocketAddr, max_body: usize) -> (SocketAddr, Arc<Inspector>, CancellationToken) {
    front_of(backend, max_body, Duration::from_secs(60)).await
}

/// A front port for `backend` whose requests wait `response` for an answer.
async fn front_with(backend: SocketAddr, response: Duration) -> (SocketAddr, Arc<Inspector>, CancellationToken) {
    front_of(backend, 1024, response).await
}

async fn front_of(
    backend: SocketAddr,
    max_body: usize,
    response: Duration,
) -> (SocketAddr, Arc<Inspector>, CancellationToken) {
    front_on(
        Route::Ready(Backend::new(backend)),
        max_body,
        Duration::from_secs(5),
        response,
    )
    .await
}

/// A front port whose route is `route` for good.
async fn front_on(
    route: Route,
    max_body: usize,
    ready: Duration,
    response: Duration,
) -> (SocketAddr, Arc<Inspector>, CancellationToken) {
    front_faulty(route, max_body, (ready, response), super::FaultState::new().1).await
}

/// [`front_on`] with the faults `faults` sets.
async fn front_faulty(
    route: Route,
    max_body: usize,
    (ready, response): (Duration, Duration),
    faults: super::FaultState,
) -> (SocketAddr, Arc<Inspector>, CancellationToken) {
    // The route never changes here: its sender may go.
    let (_, route) = watch::channel(route);
    front_routed(route, max_body, (ready, response), faults, Arc::default()).await
}

/// [`front_faulty`] with a route the test changes, and developers' copies
/// in `routed`.
async fn front_routed(
    route: watch::Receiver<Route>,
    max_body: usize,
    (ready, response): (Duration, Duration),
    faults: super::FaultState,
    routed: Arc<super::RoutedCopies>,
) -> (SocketAddr, Arc<Inspector>, CancellationToken) {
    let front = super::testing::serve(route, max_body, (ready, response), faults, routed);
    (front.addr, front.inspector, front.shutdown)
}

/// Waits until `count` exchanges are complete.
async fn complete(inspector: &Inspector, count: usize) -> Vec<crate::inspector::Exchange> {
    let mut events = inspector.store.subscribe();
    loop {
        let all = inspector.store.list(&Filter::default());
        if all.iter().filter(|e| e.complete).count() >= count {
            return all;
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .expect("an event in time");
    }
}

#[tokio::test]
async fn keep_alive_requests_are_each_captured_with_trace_and_body() {
    let (front, inspector, _shutdown) = front(backend().await, 1024).await;
    let stream = TcpStream::connect(front).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    for body in ["one", "two"] {
        let request = Request::post("/echo")
            .header("host", "svc")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.into_body().collect().await.unwrap().to_bytes(), body);
    }
    let all = complete(&inspector, 2).await;
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].request_body.text.as_deref(), Some("one"));
    assert_eq!(all[1].response_body.text.as_deref(), Some("two"));
    assert_eq!(
        (all[0].method.as_str(), all[0].status, all[0].kind),
        ("POST", Some(200), Kind::Http)
    );
    assert_eq!(&*all[0].caller, "external");
    assert_ne!(
        all[0].trace_id, all[1].trace_id,
        "a request without traceparent starts a trace"
    );
    assert!(all[0].request_headers.get("traceparent").is_some());
}

#[tokio::test]
async fn a_given_trace_is_kept_and_this_hop_is_its_child() {
    let (front, inspector, _shutdown) = front(backend().await, 1024).await;
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let request = Request::get(format!("http://{front}/"))
        .header("traceparent", traceparent)
        .body(Full::default())
        .unwrap();
    client
        .request(request)
        .await
        .unwrap()
        .into_body()
        .collect()
        .await
        .unwrap();
    let all = complete(&inspector, 1).await;
    assert_eq!(
        all[0].trace_id.map(|t| t.to_string()).as_deref(),
        Some("4bf92f3577b34da6a3ce929d0e0e4736")
    );
    // The service sees this hop's span, whose parent is the caller's.
    let span = all[0].span_id.expect("a span").to_string();
    assert_eq!(
        all[0].parent_span_id.map(|s| s.to_string()).as_deref(),
        Some("00f067aa0ba902b7")
    );
    assert!(!all[0].trace_inferred);
    assert_eq!(
        all[0].request_headers.get("traceparent").as_deref(),
        Some(format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{span}-01").as_str())
    );
}

#[tokio::test]
async fn http2_requests_are_captured() {
    let (front, inspector, _shutdown) = front(backend().await, 1024).await;
    let client = h2_client();
    let request = Request::post(format!("http://{front}/echo"))
        .body(Full::new(Bytes::from("h2 body")))
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.version(), hyper::Version::HTTP_2);
    assert_eq!(response.into_body().collect().await.unwrap().to_bytes(), "h2 body");
    let all = complete(&inspector, 1).await;
    assert_eq!(all[0].version, "HTTP/2.0");
    assert_eq!(all[0].request_body.text.as_deref(), Some("h2 body"));
}

/// A backend that speaks HTTP/1 only (axum without its `http2` feature):
/// the HTTP/2 preface gets it nowhere.
async fn http1_only_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), hyper::service::service_fn(handle))
                    .await;
            });
        }
    });
    addr
}

/// `curl --http2-prior-knowledge` to an HTTP/1 service: each stream is
/// translated into an HTTP/1.1 request, never a 502 that blames the service.
#[tokio::test]
async fn http2_clients_of_an_http1_service_are_translated() {
    let backend = http1_only_backend().await;
    assert_eq!(super::h2::speaks_http2(backend).await, Some(false));
    assert_eq!(super::h2::speaks_http2(counted_backend().await.0).await, Some(true));
    let (front, inspector, _shutdown) = front(backend, 1024).await;
    let client = h2_client();
    for body in ["first", "second"] {
        let request = Request::post(format!("http://{front}/echo"))
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let response = client.request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.version(), hyper::Version::HTTP_2);
        assert_eq!(response.into_body().collect().await.unwrap().to_bytes(), body);
    }
    let all = complete(&inspector, 2).await;
    assert!(all.iter().all(|e| e.version == "HTTP/2.0" && e.status == Some(200)));
}

#[tokio::test]
async fn chunked_and_large_bodies_are_counted_whole_and_kept_in_part() {
    let (front, inspector, _shutdown) = front(backend().await, 1000).await;
    let mut stream = TcpStream::connect(front).await.unwrap();
    let request = "POST /echo HTTP/1.1\r\nhost: svc\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n\
                   5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    assert!(String::from_utf8_lossy(&response).ends_with("hello world"));

    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let big = client
        .get(format!("http://{front}/big").parse().unwrap())
        .await
        .unwrap();
    assert_eq!(big.into_body().collect().await.unwrap().to_bytes().len(), 1 << 20);

    let all = complete(&inspector, 2).await;
    assert_eq!(all[0].request_body.text.as_deref(), Some("hello world"));
    assert_eq!(all[0].request_body.size, 11);
    let big = &all[1].response_body;
    assert_eq!(
        (big.size, big.truncated, big.text.as_ref().map(String::len)),
        (1 << 20, true, Some(1000))
    );
}

#[tokio::test]
async fn a_websocket_passes_through_and_is_counted() {
    let (front, inspector, _shutdown) = front(backend().await, 1024).await;
    let mut stream = TcpStream::connect(front).await.unwrap();
    stream
        .write_all(b"GET /ws HTTP/1.1\r\nhost: svc\r\nconnection: upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    stream.write_all(b"ping!").await.unwrap();
    let mut echoed = [0u8; 5];
    stream.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"ping!");
    drop(stream);
    let all = complete(&inspector, 1).await;
    assert_eq!((all[0].kind, all[0].status), (Kind::WebSocket, Some(101)));
    assert_eq!((all[0].bytes_up, all[0].bytes_down), (5, 5));
}

#[tokio::test]
async fn plain_tcp_is_piped_and_counted() {
    let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = echo.accept().await.unwrap();
        let mut buf = [0u8; 16];
        let n = stream.read(&mut buf).await.unwrap();
        stream.write_all(&buf[..n]).await.unwrap();
    });
    let (front, inspector, _shutdown) = front(echo_addr, 1024).await;
    let mut stream = TcpStream::connect(front).await.unwrap();
    stream.write_all(b"\x16\x03binary").await.unwrap();
    let mut back = [0u8; 8];
    stream.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"\x16\x03binary");
    drop(stream);
    let all = complete(&inspector, 1).await;
    assert_eq!((all[0].kind, all[0].bytes_up, all[0].bytes_down), (Kind::Tcp, 8, 8));
}

/// Sends `request` on a new connection to `front` and reads until the
/// proxy closes it.
async fn exchange_raw(front: SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(front).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    String::from_utf8_lossy(&response).into_owned()
}

/// A backend that answers each request with `answer` as raw bytes, then
/// closes the connection.
async fn raw_backend(answer: &'static str) -> SocketAddr {
    scripted_backend(move |_, _| Scripted::AnswerAndClose(answer)).await.0
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let (front, inspector, _shutdown) = front(backend().await, 1024).await;
    let response = exchange_raw(
        front,
        "POST /echo HTTP/1.1\r\nhost: svc\r\ncontent-length: 5\r\n\r\nfirstPOST /echo HTTP/1.1\r\nhost: svc\r\ncontent-length: 6\r\nconnection: close\r\n\r\nsecond",
    )
    .await;
    let first = response.find("first").expect("the first answer");
    let second = response.find("second").expect("the second answer");
    assert!(first < second, "{response}");
    let all = complete(&inspector, 2).await;
    assert_eq!(all[1].request_body.text.as_deref(), Some("second"));
}

#[tokio::test]
async fn expect_continue_passes_through() {
    let (front, _inspector, _shutdown) = front(backend().await, 1024).await;
    let mut stream = TcpStream::connect(front).await.unwrap();
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nhost: svc\r\ncontent-length: 4\r\nexpect: 100-continue\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut interim = [0u8; 25];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut interim))
        .await
        .expect("the interim answer comes before the body is sent")
        .unwrap();
    assert!(
        interim.starts_with(b"HTTP/1.1 100 Continue"),
        "{}",
        String::from_utf8_lossy(&interim)
    );
    stream.write_all(b"body").await.unwrap();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await.unwrap();
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.contains("200 OK") && rest.ends_with("body"), "{rest}");
}

#[tokio::test]
async fn a_head_response_has_no_body_and_the_connection_goes_on() {
    let (front, inspector, _shutdown) = front(backend().await, 1024).await;
    let response = exchange_raw(
        front,
        "HEAD / HTTP/1.1\r\nhost: svc\r\n\r\nGET / HTTP/1.1\r\nhost: svc\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(response.matches("HTTP/1.1 200 OK").count(), 2, "{response}");
    assert!(
        response.ends_with("hello") && response.matches("hello").count() == 1,
        "{response}"
    );
    let all = complete(&inspector, 2).await;
    assert_eq!((all[0].method.as_str(), all[0].bytes_down), ("HEAD", 0));
}

#[tokio::test]
async fn a_response_ended_by_closing_is_relayed_whole() {
    let (front, inspector, _shutdown) = front(raw_backend("HTTP/1.1 200 OK\r\n\r\nuntil the end").await, 1024).await;
    let response = exchange_raw(front, "GET / HTTP/1.1\r\nhost: svc\r\n\r\n").await;
    assert!(response.ends_with("\r\n\r\nuntil the end"), "{response}");
    let all = complete(&inspector, 1).await;
    assert_eq!(all[0].response_body.text.as_deref(), Some("until the end"));
}

#[tokio::test]
async fn a_service_that_closes_after_each_answer_serves_a_kept_client_connection() {
    let answer = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    let (front, _inspector, _shutdown) = front(raw_backend(answer).await, 1024).await;
    let mut stream = TcpStream::connect(front).await.unwrap();
    for _ in 0..3 {
        stream.write_all(b"GET / HTTP/1.1\r\nhost: svc\r\n\r\n").await.unwrap();
        let mut response = vec![0u8; answer.len()];
        stream.read_exact(&mut response).await.unwrap();
        assert_eq!(String::from_utf8_lossy(&response), answer);
    }
}

#[tokio::test]
async fn a_malformed_request_gets_a_400_that_names_the_port() {
    let (front, _inspector, _shutdown) = front(backend().await, 1024).await;
    let response = exchange_raw(front, "GET / HTTP/1.1\r\nbad header line\r\n\r\n").await;
    assert!(response.starts_with("HTTP/1.1 400 Bad Request"), "{response}");
    assert!(response.contains("front port of `svc`"), "{response}");
    let response = exchange_raw(front, "POST / HTTP/1.1\r\ncontent-length: ten\r\n\r\n").await;
    assert!(
        response.starts_with("HTTP/1.1 400") && response.contains("Content-Length"),
        "{response}"
    );
}

#[tokio::test]
async fn clients_that_connect_per_request_share_connections_to_the_instance() {
    let (addr, accepted) = counted_backend().await;
    let (front, _inspector, _shutdown) = front(addr, 1024).await;
    for _ in 0..5 {
        let mut stream = TcpStream::connect(front).await.unwrap();
        stream.write_all(b"GET / HTTP/1.1\r\nhost: svc\r\n\r\n").await.unwrap();
        let mut response = Vec::new();
        while !response.ends_with(b"hello") {
            let mut buf = [0u8; 1024];
            let n = stream.read(&mut buf).await.unwrap();
            assert_ne!(n, 0, "{}", String::from_utf8_lossy(&response));
            response.extend_from_slice(&buf[..n]);
        }
        // Closing its side once answered and reading to the end, the client
        // knows the proxy is done with the connection (and has pooled its
        // upstream). A client that closes before its answer has left.
        stream.shutdown().await.unwrap();
        assert_eq!(stream.read(&mut [0u8; 1]).await.unwrap(), 0);
    }
    // The connections are dealt to the proxy's threads in turn: one
    // connection to the instance for each at most.
    let opened = accepted.load(std::sync::atomic::Ordering::SeqCst);
    assert!((1..=THREADS).contains(&opened), "{opened} connections for 5 clients");
}

/// A backend that serves raw HTTP/1.1 by a script: for each request, in
/// order of arrival on any connection, `script` says what to do with it.
/// Returns its address, the requests it received, as text, and a channel
/// told each time a connection it hangs on is closed by the proxy.
async fn scripted_backend(
    script: impl Fn(usize, &str) -> Scripted + Send + Sync + 'static,
) -> (
    SocketAddr,
    Arc<std::sync::Mutex<Vec<String>>>,
    tokio::sync::mpsc::UnboundedReceiver<()>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (hung_up, hung_up_rx) = tokio::sync::mpsc::unbounded_channel();
    let (log, script) = (Arc::clone(&received), Arc::new(script));
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let (log, script, hung_up) = (Arc::clone(&log), Arc::clone(&script), hung_up.clone());
            tokio::spawn(async move {
                loop {
                    let mut head = Vec::new();
                    while !head.ends_with(b"\r\n\r\n") {
                        let mut byte = [0u8; 1];
                        if stream.read_exact(&mut byte).await.is_err() {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let index = {
                        let mut log = log.lock().unwrap();
                        log.push(head.clone());
                        log.len() - 1
                    };
                    match script(index, &head) {
                        Scripted::Answer(answer) => stream.write_all(answer.as_bytes()).await.unwrap(),
                        Scripted::Close => return,
                        Scripted::AnswerAndClose(answer) => {
                            let _ = stream.write_all(answer.as_bytes()).await;
                            return;
                        }
                        Scripted::Hang => {
                            // Never answers; notes when the proxy lets go.
                            while !matches!(stream.read(&mut [0u8; 64]).await, Ok(0) | Err(_)) {}
                            let _ = hung_up.send(());
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, received, hung_up_rx)
}

enum Scripted {
    /// Answer, and keep the connection for the next request.
    Answer(&'static str),
    /// Close without answering (a restart, a keep-alive timeout, a crash).
    Close,
    /// Answer without reading the body, then close.
    AnswerAndClose(&'static str),
    /// Never answer (a hung service).
    Hang,
}

const OK: &str = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

/// Reads one response with a `content-length` from `stream`.
async fn read_response(stream: &mut TcpStream) -> String {
    let mut response = Vec::new();
    loop {
        let text = String::from_utf8_lossy(&response);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_owned)
                })
                .and_then(|l| l.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if body.len() >= length {
                return text.into_owned();
            }
        }
        let mut buf = [0u8; 4096];
        let n = stream.read(&mut buf).await.unwrap();
        assert_ne!(n, 0, "closed mid-response: {text}");
        response.extend_from_slice(&buf[..n]);
    }
}

/// `x-devmesh-replay` from a client is taken off and not believed; the
/// supervisor's own (with this run's key) marks the exchange a replay.
#[tokio::test]
async fn a_replay_header_from_a_client_is_stripped_and_not_believed() {
    let (addr, received, _) = scripted_backend(|_, _| Scripted::Answer(OK)).await;
    let (front, inspector, _shutdown) = front(addr, 1024).await;
    let mut client = TcpStream::connect(front).await.unwrap();
    let genuine = inspector.replay_header(7);
    for value in ["7", "7 not-the-key", genuine.as_str()] {
        let request = format!("GET /again HTTP/1.1\r\nhost: svc\r\nx-devmesh-replay: {value}\r\n\r\n");
        client.write_all(request.as_bytes()).await.unwrap();
        read_response(&mut client).await;
    }
    let all = complete(&inspector, 3).await;
    let marked: Vec<_> = all.iter().map(|e| e.replay_of).collect();
    assert_eq!(marked, [None, None, Some(7)]);
    let received = received.lock().unwrap();
    assert!(
        received.iter().all(|head| !head.contains("x-devmesh-replay")),
        "{received:?}"
    );
}

/// A request that may have been received is never sent twice: a kept
/// connection closed under a GET is retried on a new one, under a POST the
/// client gets a 502 that says what happened.
#[tokio::test]
async fn a_post_is_never_sent_twice() {
    // The first request on each connection is answered; the second finds
    // the connection closed, as after a service's keep-alive timeout.
    let (addr, received, _) = scripted_backend(|index, _| match index {
        0 | 2 | 3 | 5 => Scripted::Answer(OK),
        _ => Scripted::Close,
    })
    .await;
    let (front, _inspector, _shutdown) = front(addr, 1024).await;
    let mut client = TcpStream::connect(front).await.unwrap();
    for method in ["GET", "POST"] {
        client
            .write_all(b"GET /first HTTP/1.1\r\nhost: svc\r\n\r\n")
            .await
            .unwrap();
        assert!(read_response(&mut client).await.ends_with("ok"));
        let request = format!("{method} /second HTTP/1.1\r\nhost: svc\r\ncontent-length: 0\r\n\r\n");
        client.write_all(request.as_bytes()).await.unwrap();
        let response = read_response(&mut client).await;
        if method == "GET" {
            assert!(response.ends_with("ok"), "a GET is tried again: {response}");
        } else {
            assert!(response.starts_with("HTTP/1.1 502"), "{response}");
            assert!(response.contains("closed the connection"), "{response}");
            assert!(!response.contains("refused"), "{response}");
        }
    }
    let received = received.lock().unwrap();
    let posts = received.iter().filter(|r| r.starts_with("POST")).count();
    let gets = received.iter().filter(|r| r.starts_with("GET /second")).count();
    assert_eq!((gets, posts), (2, 1), "{received:?}");
}

/// A service that answers before reading the whole body (a 413 for an
/// upload too big) gets its answer to the client.
#[tokio::test]
async fn an_answer_before_the_body_is_read_reaches_the_client() {
    const TOO_LARGE: &str = "HTTP/1.1 413 Payload Too Large\r\ncontent-length: 8\r\nconnection: close\r\n\r\ntoo big!";
    let (addr, _, _) = scripted_backend(|_, _| Scripted::AnswerAndClose(TOO_LARGE)).await;
    let (front, _inspector, _shutdown) = front(addr, 1024).await;
    let mut client = TcpStream::connect(front).await.unwrap();
    let length = 8 * 1024 * 1024;
    client
        .write_all(format!("POST /upload HTTP/1.1\r\nhost: svc\r\ncontent-length: {length}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    // The client goes on sending while the answer comes, as curl does.
    let (mut read, mut write) = client.split();
    let sending = async {
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..length / chunk.len() {
            if write.write_all(&chunk).await.is_err() {
                break;
            }
        }
    };
    let reading = async {
        let mut response = Vec::new();
        let _ = read.read_to_end(&mut response).await;
        String::from_utf8_lossy(&response).into_owned()
    };
    let ((), response) = tokio::join!(sending, reading);
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(response.ends_with("too big!"), "{response}");
}

/// Chunked framing is read as strictly as the service behind reads it: a
/// bare LF is a 400 from the proxy, not a request that hangs.
#[tokio::test]
async fn a_bare_lf_in_chunked_framing_is_a_400() {
    let (front, _inspector, _shutdown) = front(backend().await, 1024).await;
    let response = tokio::time::timeout(
        Duration::from_secs(10),
        exchange_raw(
            front,
            "POST /echo HTTP/1.1\r\nhost: svc\r\ntransfer-encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
        ),
    )
    .await
    .expect("an answer, not a hang");
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    assert!(response.contains("bare LF"), "{response}");
}

/// A service that frames bodies by `Content-Length` alone, as a small
/// Python server does: every request line it reads, in order.
async fn length_framing_backend() -> (SocketAddr, Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                let mut stream = tokio::io::BufReader::new(stream);
                loop {
                    let mut head = String::new();
                    loop {
                        let mut line = String::new();
                        match tokio::io::AsyncBufReadExt::read_line(&mut stream, &mut line).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) if line == "\r\n" => break,
                            Ok(_) => head.push_str(&line),
                        }
                    }
                    let length = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(str::to_owned)
                        })
                        .and_then(|l| l.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    let mut body = vec![0u8; length];
                    if stream.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    log.lock()
                        .unwrap()
                        .push(head.lines().next().unwrap_or_default().to_owned());
                    if stream.get_mut().write_all(OK.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// Request smuggling (RFC 9112 §6.3): `Content-Length` beside a chunked
/// body hides a second request from the front port, or leaves the service
/// waiting for bytes that never come. Such a request is refused with a 400
/// and captured so; the service sees only the requests the inspector shows.
#[tokio::test]
async fn a_request_framed_two_ways_is_refused_and_never_reaches_the_service() {
    let (addr, seen) = length_framing_backend().await;
    let (front, inspector, _shutdown) = front(addr, 1024).await;
    let hidden = "GET /smuggled-admin HTTP/1.1\r\nhost: svc\r\n\r\n";
    let smuggling = [
        // The length covers only the chunk's size line: the rest is a request.
        format!(
            "POST /first HTTP/1.1\r\nhost: svc\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{hidden}\r\n0\r\n\r\n",
            hidden.len()
        ),
        // The mirror case: the length asks for more than the chunked body has.
        "POST /mirror HTTP/1.1\r\nhost: svc\r\ncontent-length: 119\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"
            .to_owned(),
        "POST /old HTTP/1.0\r\nhost: svc\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n".to_owned(),
    ];
    for request in &smuggling {
        let response = tokio::time::timeout(Duration::from_secs(10), exchange_raw(front, request))
            .await
            .expect("an answer, not a hang");
        assert!(response.starts_with("HTTP/1.1 400"), "{response}");
        assert!(response.contains("Transfer-Encoding"), "{response}");
    }
    let fine = exchange_raw(
        front,
        "POST /fine HTTP/1.1\r\nhost: svc\r\ncontent-length: 2\r\nconnection: close\r\n\r\nhi",
    )
    .await;
    assert!(fine.starts_with("HTTP/1.1 200"), "{fine}");
    assert_eq!(
        *seen.lock().unwrap(),
        ["POST /fine HTTP/1.1"],
        "one request in, one out"
    );
    let captured = complete(&inspector, 4).await;
    let mut shown: Vec<_> = captured.iter().map(|e| (e.path.as_str(), e.status)).collect();
    shown.sort();
    assert_eq!(
        shown,
        [
            ("/fine", Some(200)),
            ("/first", Some(400)),
            ("/mirror", Some(400)),
            ("/old", Some(400))
        ]
    );
}

/// An answer framed two ways goes on in the one framing the proxy followed
/// (chunked), without the `Content-Length` a client could frame it by.
#[tokio::test]
async fn an_answer_framed_two_ways_loses_its_content_length() {
    let backend =
        raw_backend("HTTP/1.1 200 OK\r\ncontent-length: 100\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n")
            .await;
    let (front, _inspector, _shutdown) = front(backend, 1024).await;
    let response = exchange_raw(front, "GET / HTTP/1.1\r\nhost: svc\r\nconnection: close\r\n\r\n").await;
    assert_eq!(
        response,
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
    );
}

#[tokio::test]
async fn a_lowercase_or_unknown_method_is_a_400_not_a_pipe() {
    let (front, inspector, _shutdown) = front(backend().await, 1024).await;
    for (request, says) in [
        ("get / HTTP/1.1\r\n\r\n", "`GET`"),
        ("BREW /pot HTTP/1.1\r\n\r\n", "`BREW`"),
    ] {
        let response = exchange_raw(front, request).await;
        assert!(response.starts_with("HTTP/1.1 400"), "{response}");
        assert!(response.contains(says), "{response}");
    }
    assert!(inspector.store.list(&Filter::default()).is_empty(), "nothing was piped");
}

/// A pooled client opens a connection and uses it later: however long it
/// waits, its requests are HTTP, each captured.
#[tokio::test]
async fn a_connection_quiet_for_a_second_is_still_http() {
    let (front, inspector, _shutdown) = front(backend().await, 1024).await;
    let mut client = TcpStream::connect(front).await.unwrap();
    // The scenario itself is the wait: a connection that stays quiet.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for _ in 0..2 {
        client.write_all(b"GET / HTTP/1.1\r\nhost: svc\r\n\r\n").await.unwrap();
        assert!(read_response(&mut client).await.ends_with("hello"));
    }
    let all = complete(&inspector, 2).await;
    assert!(
        all.iter().all(|e| e.kind == Kind::Http && e.status == Some(200)),
        "{all:?}"
    );
}

/// A service that does not answer: the request gets a 504 that names it
/// after the response timeout; a client that leaves first frees the
/// connection to the instance.
#[tokio::test]
async fn a_hung_service_gets_a_504_and_a_client_that_leaves_frees_the_connection() {
    let (addr, received, mut hung_up) = scripted_backend(|_, _| Scripted::Hang).await;
    let (front, _inspector, _shutdown) = front_with(addr, Duration::from_millis(300)).await;
    let response = exchange_raw(front, "GET /slow HTTP/1.1\r\nhost: svc\r\n\r\n").await;
    assert!(response.starts_with("HTTP/1.1 504"), "{response}");
    assert!(
        response.contains("service `svc`") && response.contains("response_timeout"),
        "{response}"
    );
    hung_up.recv().await.expect("the timed-out connection is let go");

    let (front, _inspector, _shutdown) = front_with(addr, Duration::from_secs(3600)).await;
    let mut client = TcpStream::connect(front).await.unwrap();
    client
        .write_all(b"GET /slow HTTP/1.1\r\nhost: svc\r\n\r\n")
        .await
        .unwrap();
    while received.lock().unwrap().len() < 2 {
        tokio::task::yield_now().await;
    }
    drop(client);
    tokio::time::timeout(Duration::from_secs(10), hung_up.recv())
        .await
        .expect("the client left, so the proxy lets go of the instance")
        .unwrap();
}

/// A client that reads an answer's head and closes without its body (as
/// reqwest does when a `Response` is dropped unread) was answered: the
/// inspector shows the status with a note, not an error, so the call map
/// and the `failures` filter count no failure. One that closes before any
/// answer is still a failure.
#[tokio::test]
async fn a_client_that_drops_an_answer_unread_was_answered() {
    let (front, inspector, _shutdown) = front(backend().await, 1024).await;
    // 16 MiB: a 1 MiB answer can fit in the loopback's buffers and be
    // written whole before the client goes.
    for path in ["/", "/huge"] {
        let mut client = TcpStream::connect(front).await.unwrap();
        client
            .write_all(format!("GET {path} HTTP/1.1\r\nhost: svc\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut head = Vec::new();
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let mut buf = [0u8; 512];
            let n = client.read(&mut buf).await.unwrap();
            assert_ne!(n, 0);
            head.extend_from_slice(&buf[..n]);
        }
        assert!(head.starts_with(b"HTTP/1.1 200"));
        drop(client);
    }
    let all = complete(&inspector, 2).await;
    for e in &all {
        assert_eq!(
            (e.status, e.error.as_deref()),
            (Some(200), None),
            "{} {:?}",
            e.path,
            e.note
        );
    }
    let big = all.iter().find(|e| e.path == "/huge").unwrap();
    assert!(
        big.note
            .as_deref()
            .is_some_and(|n| n.contains("closed before reading the whole answer")),
        "{:?}",
        big.note
    );
    assert!(big.bytes_down < 16 << 20, "{} bytes went down", big.bytes_down);
    let failed = Filter {
        status: Some("failed".to_owned()),
        ..Filter::default()
    };
    assert!(inspector.store.list(&failed).is_empty());
}

/// The same verdict over HTTP/2: a client that takes an answer's head and
/// cancels the stream was answered; a note says it left early.
#[tokio::test]
async fn an_http2_client_that_cancels_after_the_head_was_answered() {
    let (front, inspector, _shutdown) = front(backend().await, 1024).await;
    // A window of 64 KiB: the 1 MiB answer cannot all be sent unread.
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .http2_only(true)
        .http2_initial_stream_window_size(65_535)
        .http2_initial_connection_window_size(65_535)
        .build_http::<Full<Bytes>>();
    let request = Request::get(format!("http://{front}/big"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    drop(response);
    let all = complete(&inspector, 1).await;
    assert_eq!(
        (all[0].status, all[0].error.as_deref()),
        (Some(200), None),
        "{:?}",
        all[0].note
    );
    assert!(
        all[0]
            .note
            .as_deref()
            .is_some_and(|n| n.contains("closed before reading the whole answer")),
        "{:?}",
        all[0].note
    );
}

/// Slowloris: 200 connections that trickle a request head are closed (with
/// a 408) once the head timeout passes, while normal requests are served.
#[tokio::test]
async fn connections_that_trickle_a_head_are_closed_while_others_are_served() {
    let (front, _inspector, _shutdown) = front(backend().await, 1024).await;
    let mut slow = Vec::new();
    for _ in 0..200 {
        let mut stream = TcpStream::connect(front).await.unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nhost: svc\r\nx-slow: ")
            .await
            .unwrap();
        slow.push(stream);
    }
    let served = exchange_raw(front, "GET / HTTP/1.1\r\nhost: svc\r\nconnection: close\r\n\r\n").await;
    assert!(served.ends_with("hello"), "{served}");
    for mut stream in slow {
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
            .await
            .expect("a slow connection is closed")
            .unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    }
}

/// Past its cap, a front port leaves new connections in the backlog until
/// one of those it serves ends.
#[tokio::test]
async fn connections_past_the_cap_wait_for_one_to_end() {
    let (front, _inspector, _shutdown) = front(backend().await, 1024).await;
    let mut held = Vec::new();
    for _ in 0..CONNECTIONS {
        let mut stream = TcpStream::connect(front).await.unwrap();
        stream.write_all(b"GET / HTTP/1.1\r\nhost: svc\r\n\r\n").await.unwrap();
        assert!(read_response(&mut stream).await.ends_with("hello"));
        held.push(stream);
    }
    let mut waiting = TcpStream::connect(front).await.unwrap();
    waiting.write_all(b"GET / HTTP/1.1\r\nhost: svc\r\n\r\n").await.unwrap();
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(200), waiting.peek(&mut byte)).await;
    assert!(early.is_err(), "served past the cap");
    drop(held.pop());
    assert!(read_response(&mut waiting).await.ends_with("hello"));
}

/// The proxy's own answer to a gRPC call is one gRPC clients read: 200,
/// trailers-only, `grpc-status` UNAVAILABLE (14) with what devmesh says.
#[tokio::test]
async fn a_grpc_call_to_a_service_not_ready_gets_a_grpc_status() {
    let starting = Route::Waiting(devmesh::registry::Status::Starting);
    let (front, inspector, _shutdown) =
        front_on(starting, 1024, Duration::from_millis(100), Duration::from_secs(5)).await;
    let response = grpc_call(front, "/greeter.Greeter/SayHello").await;
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers().clone();
    assert_eq!(headers["grpc-status"], "14");
    let message = headers["grpc-message"].to_str().unwrap();
    assert!(message.contains("service `svc` is not ready"), "{message}");
    assert!(response.into_body().collect().await.unwrap().to_bytes().is_empty());
    let all = complete(&inspector, 1).await;
    assert_eq!(all[0].response_headers.get("grpc-status").as_deref(), Some("14"));
}

/// A gRPC call's outcome is read from its trailers: captured, shown as the
/// call's status, found by the `failed` filter.
#[tokio::test]
async fn a_grpc_status_in_trailers_is_the_calls_outcome() {
    let (front, inspector, _shutdown) = front(backend().await, 1024).await;
    let response = grpc_call(front, "/shop.Orders/Get").await;
    let body = response.into_body().collect().await.unwrap();
    assert_eq!(
        body.trailers().unwrap()["grpc-status"],
        "5",
        "trailers reach the client"
    );
    let all = complete(&inspector, 1).await;
    assert_eq!((all[0].status, all[0].grpc_status), (Some(200), Some(5)));
    assert_eq!(
        all[0].response_trailers.get("grpc-message").as_deref(),
        Some("no such order")
    );
    let failed = inspector.store.list(&Filter {
        status: Some("failed".into()),
        ..Filter::default()
    });
    assert_eq!(failed.len(), 1);
}

/// An HTTP/2 client with prior knowledge (h2c), as gRPC clients are.
fn h2_client() -> hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>> {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// A request sent over HTTP/2 while its instance is gone (refused, the
/// route not yet moved) waits for the next instance and is sent there
/// whole, body and all, as over HTTP/1: nothing of it had been sent.
#[tokio::test]
async fn an_http2_request_to_a_dead_instance_goes_to_the_next() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (routes, route) = watch::channel(Route::Ready(Backend::new(dead)));
    let timeouts = (Duration::from_secs(5), Duration::from_secs(5));
    let faults = super::FaultState::new().1;
    let (front, inspector, _shutdown) = front_routed(route, 1024, timeouts, faults, Arc::default()).await;
    let next = backend().await;
    let mut events = inspector.store.subscribe();
    let request = Request::post(format!("http://{front}/echo"))
        .body(Full::new(Bytes::from("sent once, whole")))
        .unwrap();
    let sent = tokio::spawn(h2_client().request(request));
    // Once the proxy has the request, the supervisor notices the crash and
    // its next instance is ready.
    events.recv().await.unwrap();
    routes.send_replace(Route::Ready(Backend::new(next)));
    let response = sent.await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.into_body().collect().await.unwrap().to_bytes(),
        "sent once, whole"
    );
    let all = complete(&inspector, 1).await;
    assert_eq!(all[0].status, Some(200));
    assert_eq!(all[0].request_body.text.as_deref(), Some("sent once, whole"));
}

/// A request with a developer's route goes to their copy, over HTTP/1 and
/// HTTP/2, its note saying so; every other to the port's own instance; and
/// one whose copy refuses the connection to the own instance, saying so.
#[tokio::test]
async fn a_request_with_a_route_goes_to_its_developers_copy() {
    let routed = Arc::new(super::RoutedCopies::default());
    let copy = raw_backend("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\ncopy!").await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    for (route, addr) in [("dev-a", copy), ("dev-gone", dead)] {
        let copy = super::RoutedCopy {
            url: format!("http://{addr}"),
            backend: Backend::remote(addr, &addr.to_string()),
            access: Some("team-token".into()),
            connected: Arc::new(std::sync::atomic::AtomicBool::new(true)),
            strict: false,
        };
        routed.insert("svc", route, copy);
    }
    let (_, route) = watch::channel(Route::Ready(Backend::new(backend().await)));
    let timeouts = (Duration::from_secs(5), Duration::from_secs(5));
    let faults = super::FaultState::new().1;
    let (front, inspector, _shutdown) = front_routed(route, 1024, timeouts, faults, routed).await;
    let http1 = |baggage: &str| {
        let request = format!("GET / HTTP/1.1\r\nhost: x\r\nbaggage: {baggage}\r\nconnection: close\r\n\r\n");
        async move { exchange_raw(front, &request).await }
    };
    assert!(http1("devmesh-route=dev-a").await.ends_with("copy!"));
    assert!(http1("devmesh-route=dev-b").await.ends_with("hello"));
    assert!(http1("devmesh-route=dev-gone").await.ends_with("hello"));
    let http2 = |baggage: &'static str| async move {
        let request = Request::get(format!("http://{front}/"))
            .header("baggage", baggage)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = h2_client().request(request).await.unwrap();
        response.into_body().collect().await.unwrap().to_bytes()
    };
    assert_eq!(http2("devmesh-route=dev-a").await, "copy!");
    assert_eq!(http2("x=1,devmesh-route=dev-b").await, "hello");
    assert_eq!(http2("devmesh-route=dev-gone").await, "hello");
    let all = complete(&inspector, 6).await;
    let notes: Vec<_> = all.iter().map(|e| e.note.clone().unwrap_or_default()).collect();
    for at in [0, 3] {
        assert!(notes[at].starts_with("route `dev-a`: to its copy at"), "{notes:?}");
        assert!(notes[at + 1].is_empty(), "{notes:?}");
        assert!(
            notes[at + 2].starts_with("route `dev-gone`: its copy at")
                && notes[at + 2].ends_with("the sandbox's own answered"),
            "{notes:?}"
        );
    }
}

/// A relay whose developer's supervisor is not connected, as the relay
/// answers a caller with a copy of its own to go to; the heads it got.
async fn asleep_relay() -> (SocketAddr, Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = Arc::clone(&heads);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let Ok(head) = crate::tunnel::relay::callers::Head::read(&mut socket).await else {
                    return;
                };
                seen.lock().unwrap().push(format!("{head:?}"));
                let waited = (!head.has_fallback).then_some(Duration::ZERO);
                let answer = crate::tunnel::relay::not_connected("svc", waited);
                socket.write_all(&answer).await.unwrap();
                let _ = socket.shutdown().await;
                let _ = tokio::io::copy(&mut socket, &mut tokio::io::sink()).await;
            });
        }
    });
    (addr, heads)
}

/// A request whose developer's copy is not connected to the relay (the
/// relay says so, having sent nothing on) goes to the port's own copy,
/// body and all, whatever its method; one whose copy went with it (a
/// killed supervisor) too when it may be sent twice, and else is a 502. A
/// strict route has no fallback.
#[tokio::test]
async fn a_request_whose_copy_is_gone_goes_to_the_sandboxs_own() {
    let routed = Arc::new(super::RoutedCopies::default());
    let (asleep, heads) = asleep_relay().await;
    let killed = scripted_backend(|_, _| Scripted::Close).await.0;
    let copies = [("dev-asleep", asleep), ("dev-killed", killed), ("dev-strict", asleep)];
    let connected: Vec<_> = copies
        .iter()
        .map(|&(route, addr)| {
            let connected = Arc::new(std::sync::atomic::AtomicBool::new(route != "dev-strict"));
            let copy = super::RoutedCopy {
                url: format!("http://{addr}"),
                backend: Backend::remote(addr, &addr.to_string()),
                access: Some("team-token".into()),
                connected: Arc::clone(&connected),
                strict: route == "dev-strict",
            };
            routed.insert("svc", route, copy);
            connected
        })
        .collect();
    let (_, route) = watch::channel(Route::Ready(Backend::new(backend().await)));
    let timeouts = (Duration::from_secs(5), Duration::from_secs(5));
    let faults = super::FaultState::new().1;
    let (front, inspector, _shutdown) = front_routed(route, 1024, timeouts, faults, routed).await;
    let http1 = |method: &str, route: &str| {
        let request = format!(
            "{method} /echo HTTP/1.1\r\nhost: x\r\nbaggage: devmesh-route={route}\r\n\
             content-length: 7\r\nconnection: close\r\n\r\norder 7"
        );
        async move { exchange_raw(front, &request).await }
    };
    let answered = http1("POST", "dev-asleep").await;
    assert!(
        answered.starts_with("HTTP/1.1 200") && answered.ends_with("order 7"),
        "{answered}"
    );
    assert!(
        heads.lock().unwrap()[0].contains("has_fallback: true"),
        "the relay was asked not to wait: {:?}",
        heads.lock().unwrap()
    );
    assert!(
        !connected[0].load(std::sync::atomic::Ordering::Relaxed),
        "the copy is taken as not connected until the relay says otherwise"
    );
    let answered = http1("PUT", "dev-killed").await;
    assert!(
        answered.starts_with("HTTP/1.1 200") && answered.ends_with("order 7"),
        "{answered}"
    );
    let answered = http1("POST", "dev-killed").await;
    assert!(
        answered.starts_with("HTTP/1.1 502"),
        "it may have been received: {answered}"
    );
    // A strict route's request goes to its copy even when it is known not
    // to be connected, and fails as the relay says.
    let answered = http1("POST", "dev-strict").await;
    assert!(
        answered.starts_with("HTTP/1.1 503") && answered.contains("`svc` is not connected"),
        "{answered}"
    );
    assert!(heads.lock().unwrap()[1].contains("has_fallback: false"));
    let all = complete(&inspector, 4).await;
    let notes: Vec<_> = all.iter().map(|e| e.note.clone().unwrap_or_default()).collect();
    assert!(
        notes[0].starts_with("route `dev-asleep`: its copy at")
            && notes[0].contains("is not connected to the relay; the sandbox's own answered"),
        "{notes:?}"
    );
    assert!(notes[1].contains("went with the request"), "{notes:?}");
    assert_eq!(all[0].request_body.text.as_deref(), Some("order 7"), "captured once");
    assert_eq!((all[0].status, all[2].status), (Some(200), Some(502)));
}

/// A unary gRPC call to `path` of `front`, with an empty message.
async fn grpc_call(front: SocketAddr, path: &str) -> Response<Incoming> {
    let request = Request::post(format!("http://{front}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
        .unwrap();
    h2_client().request(request).await.unwrap()
}

/// Faults on an HTTP/2 front port: an error answered by the port (a gRPC
/// status for a gRPC call), a latency, a stream reset with no answer, and
/// a port that resets every connection; each captured.
#[tokio::test]
async fn faults_reach_http2_and_grpc_callers() {
    use super::Faults;
    let (set, faults) = super::FaultState::new();
    let route = Route::Ready(Backend::new(backend().await));
    let timeouts = (Duration::from_secs(5), Duration::from_secs(5));
    let (front, inspector, _shutdown) = front_faulty(route, 1024, timeouts, faults).await;
    let client = h2_client();
    let get = |path: &str| {
        let request = Request::post(format!("http://{front}{path}"))
            .body(Full::new(Bytes::from("h2 body")))
            .unwrap();
        client.request(request)
    };

    set.set(Faults {
        errors: Some((1.0, StatusCode::SERVICE_UNAVAILABLE)),
        ..Faults::default()
    });
    let answered = get("/echo").await.unwrap();
    assert_eq!(answered.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = answered.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("a fault set on `svc`'s front port"));
    let grpc = grpc_call(front, "/greeter.Greeter/SayHello").await;
    assert_eq!(grpc.headers()["grpc-status"], "14");

    set.set(Faults {
        latency: Some(Duration::from_millis(200)),
        ..Faults::default()
    });
    let began = std::time::Instant::now();
    assert_eq!(get("/echo").await.unwrap().status(), StatusCode::OK);
    assert!(began.elapsed() >= Duration::from_millis(200));

    set.set(Faults {
        drops: Some(1.0),
        ..Faults::default()
    });
    assert!(get("/echo").await.is_err(), "the stream is reset");
    let all = complete(&inspector, 4).await;
    assert!(
        all.iter()
            .any(|e| e.error.as_deref().is_some_and(|e| e.contains("by a fault"))),
        "{:?}",
        all.iter().map(|e| &e.error).collect::<Vec<_>>()
    );

    set.set(Faults {
        unreachable: true,
        ..Faults::default()
    });
    assert!(
        h2_client()
            .request(
                Request::get(format!("http://{front}/echo"))
                    .body(Full::new(Bytes::new()))
                    .unwrap()
            )
            .await
            .is_err()
    );
}
