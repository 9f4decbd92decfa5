//! Front ports: the stable address of each service. The supervisor holds the
//! port for as long as it runs; this module accepts there and forwards to
//! whichever instance of the service is ready, waiting while none is.
//!
//! HTTP (HTTP/1.1 and h2c) is forwarded request by request, so a client's
//! keep-alive connection outlives the instance behind it: a restart is
//! invisible. Anything else is piped as TCP. Each exchange is handed to the
//! inspector on its way. The proxy owns no processes.

#[cfg(test)]
mod capture_tests;
mod route;

pub use route::{Backend, Lease, Route};

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode, Version, header};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::inspector::{
    self, EXCHANGE_HEADER, Headers, InFlight, Inspector, Kind, REPLAY_HEADER, Seen, Tee,
    trace::{SpanId, TraceId, TraceParent},
};

const TRACEPARENT: &str = "traceparent";

/// How long the first bytes of a connection are awaited to tell HTTP from
/// other TCP; a protocol where the server speaks first is piped after this.
const SNIFF_TIMEOUT: Duration = Duration::from_millis(300);

type Body = BoxBody<Bytes, hyper::Error>;

/// One front port.
#[derive(Debug)]
pub struct Front {
    pub service: String,
    /// The front port; each worker thread accepts on it.
    pub listener: std::net::TcpListener,
    pub route: watch::Receiver<Route>,
    /// How long a request waits for a ready instance before a 503.
    pub ready_timeout: Duration,
    /// Where traffic is captured.
    pub inspector: Arc<Inspector>,
}

struct Context {
    service: Arc<str>,
    route: watch::Receiver<Route>,
    ready_timeout: Duration,
    inspector: Arc<Inspector>,
    http1: Client<HttpConnector, Captured>,
    http2: Client<HttpConnector, Captured>,
}

/// One client connection: who is on the other end, found once.
struct Connection {
    peer: SocketAddr,
    local: SocketAddr,
    caller: OnceLock<Arc<str>>,
    /// This client connection's own connection to the instance, reused
    /// request after request (HTTP/1 requests on one connection come one
    /// at a time), as a reverse proxy's keep-alive upstream is.
    upstream: Mutex<Option<Upstream>>,
}

/// A kept connection to an instance.
struct Upstream {
    addr: SocketAddr,
    sender: hyper::client::conn::http1::SendRequest<Captured>,
}

impl Connection {
    fn caller(&self, inspector: &Inspector) -> Arc<str> {
        let caller = self
            .caller
            .get_or_init(|| inspector.callers.identify(self.peer, self.local).into());
        Arc::clone(caller)
    }
}

/// Connections to instances: small request/response exchanges on
/// loopback, where Nagle's algorithm only adds delay.
fn connector() -> HttpConnector {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector
}

/// Serves `front` until `shutdown`.
/// Serves every front port until `shutdown` on a thread of its own, with a
/// single-threaded runtime: a connection lives on the thread that accepted
/// it, so forwarding never hands work between threads. Measured with
/// bench/proxy on 2 cores, a multi-threaded runtime managed 22k requests/s
/// and two such threads no more than one; `WORKERS` says how many.
/// The threads end after `shutdown`.
pub fn start(fronts: Vec<Front>, shutdown: CancellationToken) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> {
    const WORKERS: usize = 1;
    for front in &fronts {
        front.listener.set_nonblocking(true)?;
    }
    (0..WORKERS)
        .map(|worker| {
            let listeners = fronts
                .iter()
                .map(|f| f.listener.try_clone())
                .collect::<std::io::Result<Vec<_>>>()?;
            let contexts: Vec<Arc<Context>> = fronts.iter().map(Context::new).collect();
            let shutdown = shutdown.clone();
            std::thread::Builder::new()
                .name(format!("devmesh-proxy-{worker}"))
                .spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("a proxy runtime starts");
                    runtime.block_on(async move {
                        for (listener, context) in listeners.into_iter().zip(contexts) {
                            match TcpListener::from_std(listener) {
                                Ok(listener) => {
                                    tokio::spawn(accept(listener, context, shutdown.clone()));
                                }
                                Err(e) => eprintln!("devmesh: front port of `{}`: {e}", context.service),
                            }
                        }
                        shutdown.cancelled().await;
                    });
                })
        })
        .collect()
}

impl Context {
    fn new(front: &Front) -> Arc<Context> {
        Arc::new(Context {
            service: front.service.as_str().into(),
            route: front.route.clone(),
            ready_timeout: front.ready_timeout,
            inspector: Arc::clone(&front.inspector),
            http1: Client::builder(TokioExecutor::new()).build(connector()),
            http2: Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build(connector()),
        })
    }
}

async fn accept(listener: TcpListener, context: Arc<Context>, shutdown: CancellationToken) {
    let local = listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // EMFILE and the like: the next accept may work.
                Err(_) => continue,
            },
        };
        let _ = stream.set_nodelay(true);
        let connection = Arc::new(Connection {
            peer,
            local,
            caller: OnceLock::new(),
            upstream: Mutex::new(None),
        });
        tokio::spawn(serve_connection(stream, Arc::clone(&context), connection));
    }
}

async fn serve_connection(stream: TcpStream, context: Arc<Context>, connection: Arc<Connection>) {
    let mut head = [0u8; 16];
    let sniffed = match tokio::time::timeout(SNIFF_TIMEOUT, stream.peek(&mut head)).await {
        Ok(Ok(0)) | Ok(Err(_)) => return,
        Ok(Ok(n)) => &head[..n],
        Err(_) => &[][..],
    };
    if looks_like_http(sniffed) {
        let service =
            hyper::service::service_fn(move |request| forward(request, Arc::clone(&context), Arc::clone(&connection)));
        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .await;
    } else {
        pipe(stream, &context, &connection).await;
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
    /// The ready instance, leased while the route is read: a restart that
    /// switches the route after this read then waits for the lease before
    /// stopping the instance.
    async fn ready_backend(&self) -> Result<(Backend, Lease), String> {
        let leased = |route: &Route| match route {
            Route::Ready(backend) => Some((backend.clone(), backend.drain.lease())),
            Route::Waiting(_) => None,
        };
        // The common case, without a timer.
        if let Some(ready) = leased(&self.route.borrow()) {
            return Ok(ready);
        }
        let mut route = self.route.clone();
        let ready = tokio::time::timeout(self.ready_timeout, route.wait_for(|r| matches!(r, Route::Ready(_)))).await;
        if let Ok(Ok(route)) = ready
            && let Some(ready) = leased(&route)
        {
            return Ok(ready);
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

    fn capturing(&self) -> bool {
        self.inspector.store.config.capture
    }
}

/// The request body as forwarded: captured on its way, or as it came.
type Captured = Tee<Incoming>;

async fn forward(
    mut request: Request<Incoming>,
    context: Arc<Context>,
    connection: Arc<Connection>,
) -> Result<Response<Body>, Infallible> {
    let arrived = Instant::now();
    let ready = context.ready_backend().await;
    let waited = arrived.elapsed();
    let replay_of = request
        .headers_mut()
        .remove(REPLAY_HEADER)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let capture = context
        .capturing()
        .then(|| start_capture(&mut request, &context, &connection, waited, replay_of));
    let (backend, lease) = match ready {
        Ok(ready) => ready,
        Err(message) => {
            let response = plain(StatusCode::SERVICE_UNAVAILABLE, message);
            return Ok(finish_capture(capture, &context, response, arrived, None));
        }
    };
    let client_upgrade = request
        .headers()
        .contains_key(header::UPGRADE)
        .then(|| hyper::upgrade::on(&mut request));
    let http2 = request.version() == Version::HTTP_2;
    let limit = context.inspector.store.config.max_body;
    let mut request = request.map(|body| {
        let (inspector, id) = (Arc::clone(&context.inspector), capture.as_ref().map(|c| c.id));
        Tee::new(body, if id.is_some() { limit } else { 0 }, move |seen| {
            // An empty body (most GETs) has nothing to record.
            if let Some(id) = id.filter(|_| seen.size > 0) {
                inspector.store.update(id, |e| {
                    e.request_body = body_of(seen.kept, seen.size, seen.truncated);
                    e.bytes_up = seen.size;
                });
            }
        })
    });
    let forwarded = Instant::now();
    let sent = if http2 || client_upgrade.is_some() {
        // The pooled clients want the absolute form, and send the origin form.
        let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
        *request.uri_mut() = format!("http://{}{path}", backend.addr)
            .parse()
            .expect("an address and a path make a URI");
        let client = if http2 { &context.http2 } else { &context.http1 };
        client.request(request).await.map_err(|e| e.to_string())
    } else {
        // A kept connection writes the URI as it is: the origin form, as it came.
        send_upstream(&connection, backend.addr, request).await
    };
    let mut response = match sent {
        Ok(response) => response,
        Err(e) => {
            let message = format!(
                "devmesh: service `{}` at {} did not answer: {e} (hint: `cargo devmesh logs {}`)\n",
                context.service, backend.addr, context.service
            );
            let response = plain(StatusCode::BAD_GATEWAY, message);
            return Ok(finish_capture(capture, &context, response, arrived, Some(forwarded)));
        }
    };
    if response.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_upgrade) = client_upgrade
    {
        let backend_upgrade = hyper::upgrade::on(&mut response);
        let inspector = Arc::clone(&context.inspector);
        let id = capture.as_ref().map(|c| c.id);
        tokio::spawn(async move {
            let _lease = lease;
            if let (Ok(client), Ok(backend)) = tokio::join!(client_upgrade, backend_upgrade) {
                let copied = tokio::io::copy_bidirectional(&mut TokioIo::new(client), &mut TokioIo::new(backend)).await;
                if let (Some(id), Ok((up, down))) = (id, copied) {
                    inspector.store.update(id, |e| {
                        e.bytes_up = up;
                        e.bytes_down = down;
                        e.complete = true;
                    });
                }
            }
        });
        if let Some(capture) = &capture {
            context.inspector.store.update(capture.id, |e| e.kind = Kind::WebSocket);
        }
        let response = response.map(BodyExt::boxed);
        return Ok(finish_capture(capture, &context, response, arrived, Some(forwarded)));
    }
    // The lease lasts until the body has passed: the instance is not
    // stopped while it still sends.
    let response = response.map(|body| BodyExt::boxed(Tee::new(body, 0, move |_| drop(lease))));
    Ok(finish_capture(capture, &context, response, arrived, Some(forwarded)))
}

/// Sends an HTTP/1 request on the client connection's own upstream
/// connection, opening one when there is none, it went to an instance that
/// has since been replaced, or it was closed.
async fn send_upstream(
    connection: &Connection,
    addr: SocketAddr,
    mut request: Request<Captured>,
) -> Result<Response<Incoming>, String> {
    let kept = connection.upstream.lock().unwrap_or_else(|e| e.into_inner()).take();
    let mut kept = kept.filter(|u| u.addr == addr && !u.sender.is_closed());
    for _ in 0..2 {
        let mut upstream = match kept.take() {
            Some(upstream) => upstream,
            None => Upstream {
                addr,
                sender: connect(addr).await?,
            },
        };
        if upstream.sender.ready().await.is_err() {
            continue;
        }
        let closing = wants_close(request.headers());
        match upstream.sender.try_send_request(request).await {
            Ok(response) => {
                // A connection either side asked to close is not kept: the
                // next request would find it closed under it.
                if !closing && !wants_close(response.headers()) && response.version() == Version::HTTP_11 {
                    *connection.upstream.lock().unwrap_or_else(|e| e.into_inner()) = Some(upstream);
                }
                return Ok(response);
            }
            // Closed before the request went out: try once on a new connection.
            Err(mut e) => match e.take_message() {
                Some(unsent) => request = unsent,
                None => return Err(e.into_error().to_string()),
            },
        }
    }
    Err(format!(
        "the connection to {addr} closed twice before the request went out"
    ))
}

/// Whether headers carry `Connection: close`.
fn wants_close(headers: &header::HeaderMap) -> bool {
    headers.get_all(header::CONNECTION).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
    })
}

async fn connect(addr: SocketAddr) -> Result<hyper::client::conn::http1::SendRequest<Captured>, String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    Ok(sender)
}

/// An exchange being captured.
struct Capture {
    id: u64,
    service: Arc<str>,
    /// A replay answers with the id it was captured as.
    replay: bool,
}

/// Records the request head, and gives it a `traceparent` when it has none:
/// a new trace, or the one of the caller's request in flight.
fn start_capture(
    request: &mut Request<Incoming>,
    context: &Context,
    connection: &Connection,
    waited: Duration,
    replay_of: Option<u64>,
) -> Capture {
    let store = &context.inspector.store;
    let caller = connection.caller(&context.inspector);
    let given = request
        .headers()
        .get(TRACEPARENT)
        .and_then(|v| TraceParent::parse(v.to_str().ok()?));
    let (trace, parent, inferred) = match given {
        Some(given) => (given, None, false),
        None => {
            let cause = store.cause(&caller);
            let trace_id = cause.map_or_else(TraceId::random, |c| c.trace_id);
            let parent = cause.map(|c| c.span_id);
            let inferred = parent.is_some();
            let trace = TraceParent::new(trace_id, SpanId::random());
            if let Ok(value) = header::HeaderValue::from_bytes(&trace.header()) {
                request.headers_mut().insert(TRACEPARENT, value);
            }
            (trace, parent, inferred)
        }
    };
    let mut exchange = inspector::blank(context.service.clone(), caller, Kind::Http);
    exchange.method = request.method().to_string();
    exchange.path = request.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned();
    exchange.version = format!("{:?}", request.version());
    exchange.request_headers = Headers::new(request.headers());
    exchange.wait_ms = millis(waited);
    exchange.trace_id = Some(trace.trace_id);
    exchange.span_id = Some(trace.span_id);
    exchange.parent_span_id = parent;
    exchange.trace_inferred = inferred;
    exchange.replay_of = replay_of;
    let id = store.add(exchange);
    store.start(
        &context.service,
        InFlight {
            id,
            trace_id: trace.trace_id,
            span_id: trace.span_id,
        },
    );
    Capture {
        id,
        service: context.service.clone(),
        replay: replay_of.is_some(),
    }
}

/// Records the response head, and wraps its body to record the rest.
fn finish_capture(
    capture: Option<Capture>,
    context: &Context,
    mut response: Response<Body>,
    arrived: Instant,
    forwarded: Option<Instant>,
) -> Response<Body> {
    let Some(Capture { id, service, replay }) = capture else {
        return response;
    };
    let inspector = Arc::clone(&context.inspector);
    if replay && let Ok(value) = header::HeaderValue::from_str(&id.to_string()) {
        response.headers_mut().insert(EXCHANGE_HEADER, value);
    }
    inspector.store.update(id, |e| {
        e.status = Some(response.status().as_u16());
        e.response_headers = Headers::new(response.headers());
        e.service_ms = forwarded.map(|f| millis(f.elapsed()));
    });
    let limit = inspector.store.config.max_body;
    response.map(move |body| {
        BodyExt::boxed(Tee::new(body, limit, move |seen: Seen| {
            inspector.store.update(id, |e| {
                e.response_body = body_of(seen.kept, seen.size, seen.truncated);
                e.bytes_down = seen.size;
                e.total_ms = Some(millis(arrived.elapsed()));
                e.complete = e.kind != Kind::WebSocket;
                if !seen.finished {
                    e.error = Some("the response was cut short".to_owned());
                }
            });
            inspector.store.done(&service, id);
        }))
    })
}

/// Pipes a non-HTTP connection to the ready instance, counting bytes.
async fn pipe(mut stream: TcpStream, context: &Context, connection: &Connection) {
    let Ok((backend, _lease)) = context.ready_backend().await else {
        return;
    };
    let id = context.capturing().then(|| {
        let caller = connection.caller(&context.inspector);
        let mut exchange = inspector::blank(context.service.clone(), caller, Kind::Tcp);
        exchange.method = "TCP".to_owned();
        context.inspector.store.add(exchange)
    });
    let began = Instant::now();
    let copied = match TcpStream::connect(backend.addr).await {
        Ok(mut upstream) => tokio::io::copy_bidirectional(&mut stream, &mut upstream).await,
        Err(e) => Err(e),
    };
    if let Some(id) = id {
        context.inspector.store.update(id, |e| {
            match &copied {
                Ok((up, down)) => (e.bytes_up, e.bytes_down) = (*up, *down),
                Err(error) => e.error = Some(error.to_string()),
            }
            e.total_ms = Some(millis(began.elapsed()));
            e.complete = true;
        });
    }
}

fn body_of(kept: Vec<u8>, size: u64, truncated: bool) -> inspector::Body {
    inspector::Body::new(kept, size, truncated)
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn plain(status: StatusCode, message: String) -> Response<Body> {
    let body = Full::new(Bytes::from(message)).map_err(|never| match never {}).boxed();
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
