//! Front ports: the stable address of each service. The supervisor holds the
//! port for as long as it runs; this module accepts there and forwards to
//! whichever instance of the service is ready, waiting while none is.
//!
//! HTTP is forwarded request by request, so a client's keep-alive
//! connection outlives the instance behind it: a restart is invisible.
//! HTTP/1 goes through the proxy's own forwarder ([`http1`]), h2c through
//! hyper ([`h2`]). A service declared `protocol = "tcp"` is piped as TCP,
//! and so is a connection to an HTTP service whose first bytes are not
//! HTTP; how long a connection stays quiet never decides it, for pooled
//! clients open connections long before they use them. Each exchange is
//! captured on its way ([`capture`]). The proxy owns no processes.

mod capture;
#[cfg(test)]
mod capture_tests;
pub mod client;
pub mod fault;
mod h2;
pub(crate) mod http1;
pub(crate) mod message;
mod route;
pub mod routed;
pub mod switch;
#[cfg(test)]
pub mod testing;
pub mod tls;

pub use client::{ClientIo, Peek};
pub use fault::{FaultSetter, FaultState, Faults};
pub use route::{Backend, Lease, Route};
pub use routed::{RoutedCopies, RoutedCopy};
pub use switch::{FrontPort, LocalRoute, Remote, Switch, Switches, Traffic};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::StatusCode;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use devmesh::config::Protocol;
use devmesh::registry::Status;

use crate::accept::Backoff;
use crate::inspector::{self, Inspector, Kind};
use client::ClientConnection;

/// How long an HTTP connection may wait for its next request. Longer than
/// the idle timeout of common client pools (hyper's and reqwest's 90 s), so
/// the client, which knows whether it still wants the connection, closes
/// it first and never races the proxy's close with a request.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a request head may take once its first byte came; a client
/// that trickles one (slowloris) holds no connection longer.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections one front port serves at once; more wait in the kernel's
/// backlog. Each holds two buffers of 16 KiB while it lasts, so a flood of
/// connections cannot take the supervisor's memory.
pub const MAX_CONNECTIONS: usize = 1024;
/// How long a request to an instance that refused it waits for the route
/// to leave that instance: a crashed process is seen by the supervisor in
/// milliseconds; one that lives but does not listen never leaves.
const CRASH_NOTICED: Duration = Duration::from_secs(1);
/// A request that has waited this long for its response makes the
/// supervisor check whether the service still answers.
const STALL_AFTER: Duration = Duration::from_secs(5);

/// One front port.
#[derive(Debug)]
pub struct Front {
    pub service: String,
    /// The front port; the first proxy thread accepts on it.
    pub listener: std::net::TcpListener,
    pub route: watch::Receiver<Route>,
    /// What the port carries.
    pub protocol: Protocol,
    pub timeouts: Timeouts,
    /// Connections served at once ([`MAX_CONNECTIONS`]).
    pub max_connections: usize,
    /// Where traffic is captured.
    pub inspector: Arc<Inspector>,
    /// What it does to requests besides forwarding them (none, but in a
    /// test that sets some).
    pub faults: FaultState,
    /// Developers' copies, for the requests that carry their route.
    pub routed: Arc<RoutedCopies>,
    /// This developer's route, which requests leaving for the sandbox
    /// carry (when they carry none): `Some` when a service here is routed.
    pub developer_route: Option<Arc<str>>,
}

/// How long a request waits.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// For a ready instance, then a 503 (`run.ready_timeout`).
    pub ready: Duration,
    /// For the head of its response, then a 504 (`run.response_timeout`).
    pub response: Duration,
    /// For the rest of a request head once it began, then a 408.
    pub head: Duration,
    /// For the next request on a kept connection, then it closes.
    pub idle: Duration,
}

impl Timeouts {
    /// The configured ones, and the proxy's own for heads and idle connections.
    pub fn new(ready: Duration, response: Duration) -> Timeouts {
        Timeouts {
            ready,
            response,
            head: HEAD_TIMEOUT,
            idle: IDLE_TIMEOUT,
        }
    }
}

/// A front port as one proxy thread serves it.
struct Context {
    service: Arc<str>,
    /// Which proxy thread this is, from 0: its shard of the inspector's
    /// store, and its count of what is in flight to an instance.
    thread: usize,
    route: watch::Receiver<Route>,
    protocol: Protocol,
    timeouts: Timeouts,
    inspector: Arc<Inspector>,
    faults: FaultState,
    routed: Arc<RoutedCopies>,
    developer_route: Option<Arc<str>>,
    /// Connections to the instance kept for HTTP/1 clients to come.
    pool: http1::Pool,
    http2: Client<HttpConnector, h2::Captured>,
    /// HTTP/2 streams to an instance that speaks HTTP/1 only, translated.
    http1: Client<HttpConnector, h2::Captured>,
    /// Which instances speak HTTP/2, by address, as [`h2::speaks_http2`] found.
    speaks_http2: std::sync::Mutex<std::collections::HashMap<SocketAddr, bool>>,
}

/// Where a request goes: the instance the route named when it was read,
/// held for the request by its lease.
#[derive(Debug)]
struct Target {
    addr: SocketAddr,
    /// The `Host` to ask a remote instance with.
    host: Option<Arc<str>>,
    lease: Lease,
}

/// Connections to instances: small request/response exchanges on
/// loopback, where Nagle's algorithm only adds delay.
fn connector() -> HttpConnector {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector
}

/// Starts `count` proxy threads (at most [`MAX_THREADS`]), each with a
/// single-threaded runtime and its own shard of the inspector's store: a
/// connection lives on one thread from accept to close, so forwarding
/// never hands work between threads. The threads end after `shutdown`;
/// [`Proxy::serve`] gives them front ports.
pub fn start(
    count: usize,
    say: crate::accept::Say,
    shutdown: CancellationToken,
) -> std::io::Result<(Proxy, Vec<std::thread::JoinHandle<()>>)> {
    let count = count.clamp(1, MAX_THREADS);
    let mut threads = Vec::with_capacity(count);
    let mut runtimes = Vec::with_capacity(count);
    for index in 0..count {
        let (runtime, thread) = worker(index, shutdown.clone())?;
        threads.push(thread);
        runtimes.push(runtime);
    }
    let proxy = Proxy {
        runtimes: runtimes.into(),
        say,
    };
    Ok((proxy, threads))
}

/// The proxy threads, to give front ports to.
#[derive(Clone)]
pub struct Proxy {
    runtimes: Arc<[tokio::runtime::Handle]>,
    say: crate::accept::Say,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy").field("threads", &self.runtimes.len()).finish()
    }
}

impl Proxy {
    /// Serves `front` until `stop` (or the threads' shutdown): the first
    /// thread accepts and deals its connections out in turn. Once stopped,
    /// the port is closed; connections open on it finish. The door it
    /// returns takes connections from within this process.
    pub fn serve(&self, front: Front, stop: CancellationToken) -> std::io::Result<Door> {
        let limit = Arc::new(tokio::sync::Semaphore::new(front.max_connections));
        let contexts: Arc<[Arc<Context>]> = (0..self.runtimes.len())
            .map(|thread| Context::new(&front, thread))
            .collect();
        let backoff = Backoff::new(format!("the front port of `{}`", front.service), Arc::clone(&self.say));
        front.listener.set_nonblocking(true)?;
        let local = front.listener.local_addr()?;
        // A socket is registered with the runtime that polls it.
        let _entered = self.runtimes[0].enter();
        let listener = TcpListener::from_std(front.listener)?;
        let door = Door {
            contexts,
            runtimes: Arc::clone(&self.runtimes),
            limit,
            local,
            turn: Arc::default(),
        };
        self.runtimes[0].spawn(accept(listener, door.clone(), backoff, stop));
        Ok(door)
    }
}

/// A front port's way in from this process: the tunnel hands it each call
/// the relay carries in, served like one accepted on the port.
#[derive(Clone)]
pub struct Door {
    contexts: Arc<[Arc<Context>]>,
    runtimes: Arc<[tokio::runtime::Handle]>,
    /// Connections served at once ([`MAX_CONNECTIONS`]).
    limit: Arc<tokio::sync::Semaphore>,
    /// The front port's address.
    local: SocketAddr,
    /// The proxy thread to serve the next handed connection.
    turn: Arc<std::sync::atomic::AtomicUsize>,
}

impl std::fmt::Debug for Door {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Door").field("front", &self.local).finish()
    }
}

impl Door {
    /// Serves `client`, a connection from `caller`, on the next proxy thread.
    pub fn hand<C: ClientIo>(&self, client: C, caller: &str) {
        let turn = self.turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.runtimes.len();
        let connection = Arc::new(ClientConnection::handed(caller, self.local));
        let context = Arc::clone(&self.contexts[turn]);
        let limit = Arc::clone(&self.limit);
        self.runtimes[turn].spawn(async move {
            let Ok(_permit) = limit.acquire_owned().await else {
                return;
            };
            serve_connection(client, context, connection).await;
        });
    }
}

/// How many proxy threads this machine gets: half its cores, for the
/// services behind the proxy need the rest, and at least one. On 2 cores
/// shared by wrk, the proxy and the service (bench/proxy), one thread
/// served 78k requests/s at p99 392 µs and 9.4 µs of CPU a request; two
/// served 77k at 428 µs and 10.0 µs.
pub fn threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    (cores / 2).clamp(1, MAX_THREADS)
}

/// Proxy threads at most.
pub const MAX_THREADS: usize = 4;

/// Starts a proxy thread; returns its runtime's handle.
fn worker(
    index: usize,
    shutdown: CancellationToken,
) -> std::io::Result<(tokio::runtime::Handle, std::thread::JoinHandle<()>)> {
    // No process or signal driver: a proxy thread has no use for them.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    let handle = runtime.handle().clone();
    let thread = std::thread::Builder::new()
        .name(format!("devmesh-proxy-{index}"))
        .spawn(move || runtime.block_on(shutdown.cancelled()))?;
    Ok((handle, thread))
}

impl Context {
    /// Each thread's context has its own copies of what it hands out per
    /// request (the service's name): counting references to one shared
    /// copy would pass its cache line between the threads.
    fn new(front: &Front, thread: usize) -> Arc<Context> {
        Arc::new(Context {
            service: front.service.as_str().into(),
            thread,
            route: front.route.clone(),
            protocol: front.protocol,
            timeouts: front.timeouts,
            inspector: Arc::clone(&front.inspector),
            faults: front.faults.clone(),
            routed: Arc::clone(&front.routed),
            developer_route: front.developer_route.clone(),
            pool: http1::Pool::default(),
            http2: Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build(connector()),
            http1: Client::builder(TokioExecutor::new()).build(connector()),
            speaks_http2: std::sync::Mutex::default(),
        })
    }
}

/// Accepts on a front port and deals the connections out to the proxy
/// threads in turn, each served with that thread's context of the port.
async fn accept(listener: TcpListener, door: Door, mut backoff: Backoff, stop: CancellationToken) {
    for turn in (0..door.runtimes.len()).cycle() {
        let permit = tokio::select! {
            () = stop.cancelled() => return,
            permit = Arc::clone(&door.limit).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => return,
            accepted = crate::accept::next(&listener, &mut backoff) => accepted,
        };
        let _ = stream.set_nodelay(true);
        let connection = Arc::new(ClientConnection::accepted(peer, door.local));
        let context = Arc::clone(&door.contexts[turn]);
        if turn == 0 {
            tokio::spawn(async move {
                serve_connection(stream, context, connection).await;
                drop(permit);
            });
            continue;
        }
        // A socket is registered with the runtime that polls it.
        let Ok(stream) = stream.into_std() else { continue };
        door.runtimes[turn].spawn(async move {
            if let Ok(stream) = TcpStream::from_std(stream) {
                serve_connection(stream, context, connection).await;
            }
            drop(permit);
        });
    }
}

async fn serve_connection<C: ClientIo>(mut stream: C, context: Arc<Context>, connection: Arc<ClientConnection>) {
    if context.faults.unreachable() {
        return stream.reset_on_close();
    }
    if context.protocol == Protocol::Tcp {
        return pipe(stream, &context, &connection).await;
    }
    let mut head = [0u8; 4];
    let sniffed = match tokio::time::timeout(context.timeouts.idle, client::peek(&mut stream, &mut head)).await {
        Ok(Ok(0) | Err(_)) | Err(_) => return,
        Ok(Ok(n)) => &head[..n],
    };
    if sniffed.starts_with(b"PRI ") {
        h2::serve(stream, context, connection).await;
    } else if starts_like_http(sniffed) {
        http1::serve(stream, &context, &connection).await;
    } else {
        pipe(stream, &context, &connection).await;
    }
}

/// Whether a connection's first bytes can start an HTTP/1 request line (a
/// method is a token: letters, digits and a few marks). TLS, Redis's `*`,
/// binary protocols start otherwise and are piped; anything that starts
/// like a request is parsed as one, and refused with a 400 if it is not.
fn starts_like_http(first: &[u8]) -> bool {
    let method = first.split(|&b| b == b' ').next().unwrap_or_default();
    !method.is_empty()
        && method
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl Context {
    /// The ready instance, leased while the route is read: a restart that
    /// switches the route after this read then waits for the lease before
    /// stopping the instance.
    async fn ready_backend(&self) -> Result<Target, String> {
        let leased = |route: &Route| match route {
            Route::Ready(backend) => Some(Target {
                addr: backend.addr,
                host: backend.host.clone(),
                lease: backend.lease(self.thread),
            }),
            Route::Waiting(_) => None,
        };
        // The common case, without a timer.
        if let Some(ready) = leased(&self.route.borrow()) {
            return Ok(ready);
        }
        let mut route = self.route.clone();
        let ready = tokio::time::timeout(self.timeouts.ready, route.wait_for(|r| matches!(r, Route::Ready(_)))).await;
        if let Ok(Ok(route)) = ready
            && let Some(ready) = leased(&route)
        {
            return Ok(ready);
        }
        let status = match &*self.route.borrow() {
            Route::Waiting(status) => *status,
            Route::Ready(_) => Status::Ready,
        };
        let service = &self.service;
        let hint = match status {
            Status::Stopped => format!("it was stopped: `cargo devmesh start {service}`"),
            Status::Failed => format!("fix its build, then `cargo devmesh restart {service}`"),
            _ => format!("`cargo devmesh logs {service}`"),
        };
        Err(format!(
            "devmesh: service `{service}` is not ready ({status}) after {:?} (hint: {hint})\n",
            self.timeouts.ready
        ))
    }

    /// A target for `backend`, held for the request by its lease.
    fn target(&self, backend: &Backend) -> Target {
        Target {
            addr: backend.addr,
            host: backend.host.clone(),
            lease: backend.lease(self.thread),
        }
    }

    /// Where a request's route (`route`) takes it: the developer's copy
    /// registered for this service, when it is connected or strict (with
    /// the route, owned); else the port's own, with a note when a copy is
    /// there but not connected.
    fn routing(&self, route: Option<&str>) -> (Option<(String, RoutedCopy)>, Option<String>) {
        let Some(route) = route.filter(|_| !self.routed.is_empty()) else {
            return (None, None);
        };
        match self.routed.get(&self.service, route) {
            Some(copy) if copy.strict || copy.connected.load(std::sync::atomic::Ordering::Relaxed) => {
                let note = format!("route `{route}`: to its copy at {}", copy.url);
                (Some((route.to_owned(), copy)), Some(note))
            }
            Some(copy) => {
                let note = format!(
                    "route `{route}`: its copy at {} is not connected to the relay; the sandbox's own answered",
                    copy.url
                );
                (None, Some(note))
            }
            None => (None, None),
        }
    }

    /// The `baggage` a request goes on with: leaving this developer's
    /// machine for a copy in the sandbox (`to_remote`), with this
    /// developer's route added when it carries none; else with the route it
    /// was `inferred` to have (its caller's). `None`: as it came.
    fn leaving_baggage(&self, to_remote: bool, baggage: Option<&[u8]>, inferred: Option<&str>) -> Option<String> {
        let route = self.developer_route.as_deref().filter(|_| to_remote).or(inferred)?;
        let baggage = baggage.and_then(|b| std::str::from_utf8(b).ok());
        Some(devmesh::route::with_route(baggage, route))
    }

    /// After the instance held by `failed` refused a connection or dropped
    /// one with no answer: waits for the route to leave it (a crash,
    /// which the supervisor is restarting from), then for the next ready
    /// instance, as a request during a restart waits. `None` when the route
    /// stays on it for [`CRASH_NOTICED`] (the process lives but does not
    /// listen: the caller is answered as it is) or nothing is ready in time.
    /// With `had_it`, the instance had the request when it died: only an
    /// instance killed from outside lets it go on (see [`Lease::was_killed`]).
    async fn next_instance(&self, failed: &Lease, had_it: bool) -> Option<Target> {
        let mut route = self.route.clone();
        let left = route.wait_for(|r| !matches!(r, Route::Ready(b) if failed.holds(b)));
        if !matches!(tokio::time::timeout(CRASH_NOTICED, left).await, Ok(Ok(_))) {
            return None;
        }
        if had_it && !failed.was_killed() {
            return None;
        }
        self.ready_backend().await.ok()
    }

    fn capturing(&self) -> bool {
        self.inspector.store.config.capture
    }

    /// Who is on the other end of `connection`, when traffic is captured.
    async fn caller(&self, connection: &ClientConnection) -> Option<Arc<str>> {
        if self.capturing() {
            Some(connection.caller(&self.inspector).await)
        } else {
            None
        }
    }

    /// What a client is told when the instance at `addr` sent no response
    /// within `run.response_timeout`.
    ///
    /// When the service is itself waiting on a call through another front
    /// port, that is said: the one that does not answer is named, not only
    /// the one that waits for it.
    fn no_response_in_time(&self, addr: SocketAddr) -> String {
        let service = &self.service;
        let timeout = self.timeouts.response;
        let now_ms = crate::time::now_ms();
        let waiting_on = self
            .inspector
            .store
            .in_flight(|e| *e.caller == **service && e.status.is_none())
            .into_iter()
            .min_by_key(|e| e.started_ms);
        match waiting_on {
            Some(call) => format!(
                "devmesh: service `{service}` at {addr} sent no response within {timeout:?} (run.response_timeout): \
                 it is waiting on `{}`, which has not answered its {} {} for {:.1} s \
                 (hint: is `{}` stuck? `cargo devmesh ps`, `cargo devmesh logs {}`)\n",
                call.service,
                call.method,
                call.path,
                now_ms.saturating_sub(call.started_ms) as f64 / 1000.0,
                call.service,
                call.service
            ),
            None => format!(
                "devmesh: service `{service}` at {addr} sent no response within {timeout:?} (run.response_timeout) \
                 (hint: is it stuck? `cargo devmesh ps`, `cargo devmesh logs {service}`)\n"
            ),
        }
    }

    /// What a client is told when the instance at `addr` failed it.
    fn did_not_answer(&self, addr: SocketAddr, error: &str) -> String {
        format!(
            "devmesh: service `{}` at {addr} did not answer: {error} (hint: `cargo devmesh logs {}`)\n",
            self.service, self.service
        )
    }
}

/// Awaits `response` (a response's head) for up to `timeout`; `None` when
/// it did not come. Once it has been long in coming ([`STALL_AFTER`]),
/// `lease` is told, and the supervisor checks that the service answers.
async fn awaited<F: Future>(response: F, lease: &Lease, timeout: Duration) -> Option<F::Output> {
    let asked = tokio::time::Instant::now();
    let mut response = std::pin::pin!(response);
    if let Ok(done) = tokio::time::timeout(STALL_AFTER.min(timeout), &mut response).await {
        return Some(done);
    }
    lease.suspect();
    tokio::time::timeout_at(asked + timeout, response).await.ok()
}

/// A whole plain-text answer from devmesh itself (the proxy, the relay,
/// a bridge), after which the connection closes.
pub fn local_response(status: StatusCode, message: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {} {}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{message}",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        message.len()
    )
    .into_bytes()
}

/// Listens on a loopback port of its own until `shutdown`, and hands each
/// connection to `serve` on a task of its own: a bridge that front ports
/// send to (TLS to the sandbox, a dial through the relay). Its address.
/// Trouble accepting is said through `say`.
pub async fn loopback<F, Fut>(
    say: crate::accept::Say,
    shutdown: CancellationToken,
    serve: F,
) -> std::io::Result<SocketAddr>
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let mut backoff = Backoff::new(format!("the bridge at {addr}"), say);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                (socket, _) = crate::accept::next(&listener, &mut backoff) => {
                    tokio::spawn(serve(socket));
                }
            }
        }
    });
    Ok(addr)
}

/// What a capture says of a connection that was still open when its
/// instance was stopped.
const CUT: &str = "cut: its instance was stopped while it was open (after run.drain_timeout, or by restart --now)";

/// Pipes a non-HTTP connection to the ready instance, counting bytes.
async fn pipe<C: ClientIo>(mut stream: C, context: &Context, connection: &ClientConnection) {
    let (latency, act) = context.faults.next();
    if let Some(latency) = latency {
        tokio::time::sleep(latency).await;
    }
    match act {
        fault::Act::Forward | fault::Act::Answer(_) => {}
        fault::Act::Drop => return,
        fault::Act::Reset => {
            stream.reset_on_close();
            return;
        }
    }
    let Ok(Target { addr, lease, .. }) = context.ready_backend().await else {
        return;
    };
    let open = context.caller(connection).await.map(|caller| {
        let mut exchange = inspector::Exchange::begun(context.service.clone(), caller, Kind::Tcp);
        exchange.method = "TCP".to_owned();
        context.inspector.store.add(context.thread, exchange)
    });
    let began = Instant::now();
    let copied = match TcpStream::connect(addr).await {
        Ok(mut upstream) => tokio::io::copy_bidirectional(&mut stream, &mut upstream).await,
        Err(e) => Err(e),
    };
    if let Some(open) = open {
        context.inspector.store.finish(open, None, |e| {
            match &copied {
                Ok((up, down)) => (e.bytes_up, e.bytes_down) = (*up, *down),
                Err(error) => e.error = Some(error.to_string()),
            }
            if lease.was_cut() {
                e.error = Some(CUT.to_owned());
            }
            e.total_ms = Some(capture::millis(began.elapsed()));
            e.complete = true;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_http_from_other_protocols() {
        for http in [&b"GET "[..], b"PO", b"get ", b"PROPFIND", b"BREW"] {
            assert!(starts_like_http(http), "{}", String::from_utf8_lossy(http));
        }
        for other in [&b"\x16\x03\x01"[..], b"*1\r\n", b"\0\0", b" GET", b""] {
            assert!(!starts_like_http(other), "{}", String::from_utf8_lossy(other));
        }
    }
}
