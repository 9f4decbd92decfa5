//! HTTP/1 forwarding: each client connection gets a connection of its own
//! to the instance ([`upstream`]), kept from request to request and then
//! pooled for the next client, as a reverse proxy's keep-alive upstreams
//! are, and replaced when a restart moves the service.
//!
//! Messages pass as the bytes they came as: the proxy parses heads to find
//! where each message ends, adds a `traceparent` when a request has none,
//! and keeps a copy of what it captures. A request and its response each
//! take one read and one write when they fit in a buffer, as through nginx.

mod relay;
mod upstream;

pub use upstream::Pool;

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::client::{ClientIo, Peek};
use hyper::StatusCode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::capture::{self, Arrival, Capture};
use super::fault::Act;
use super::message::{Framing, HeadError, Owned, RequestHead, ResponseHead};
use super::routed::RoutedCopy;
use super::{CUT, ClientConnection, Context, Lease, Timeouts, awaited};
use crate::inspector::trace::Trace;
use crate::inspector::{EXCHANGE_HEADER, Headers, Seen};
use relay::{Broken, Buffer, ReadError, Relay, read_head};
use upstream::Upstream;

/// Serves one client connection whose first bytes looked like HTTP/1.
pub(super) async fn serve<C: ClientIo>(mut client: C, context: &Arc<Context>, connection: &ClientConnection) {
    let mut link = Link {
        inbound: Buffer::new(),
        upstream: None,
        scratch: Vec::with_capacity(1024),
        response_scratch: Vec::with_capacity(1024),
    };
    serve_requests(&mut client, &mut link, context, connection).await;
    if let Some(upstream) = link.upstream.take() {
        context.pool.give(upstream);
    }
}

async fn serve_requests<C: ClientIo>(
    client: &mut C,
    link: &mut Link,
    context: &Arc<Context>,
    connection: &ClientConnection,
) {
    loop {
        let request = match next_request(client, &mut link.inbound, &context.timeouts).await {
            Ok(Some(request)) => request,
            Ok(None) | Err(ReadError::Io(_)) => return,
            Err(e) => {
                let status = match e {
                    ReadError::Head(HeadError::TooManyHeaders) | ReadError::TooLarge => {
                        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
                    }
                    ReadError::TimedOut => StatusCode::REQUEST_TIMEOUT,
                    _ => StatusCode::BAD_REQUEST,
                };
                let message = format!("devmesh: {e} (front port of `{}`)\n", context.service);
                let _ = client.write_all(&super::local_response(status, &message)).await;
                return;
            }
        };
        if exchange(client, link, request, context, connection).await == Next::Close {
            return;
        }
    }
}

/// Waits for the client's next request: as long as a kept connection may
/// idle for its first byte, then the head timeout for the rest of the head.
async fn next_request<C: ClientIo>(
    client: &mut C,
    inbound: &mut Buffer,
    timeouts: &Timeouts,
) -> Result<Option<RequestHead>, ReadError> {
    if inbound.filled().is_empty() {
        match tokio::time::timeout(timeouts.idle, inbound.fill(client)).await {
            Ok(Ok(0)) | Err(_) => return Ok(None),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(ReadError::Io(e)),
        }
    }
    tokio::time::timeout(timeouts.head, read_head(inbound, client, RequestHead::parse))
        .await
        .unwrap_or(Err(ReadError::TimedOut))
}

/// What a client connection holds between requests.
struct Link {
    /// What the client sent and the proxy has not forwarded yet.
    inbound: Buffer,
    /// The kept connection to the instance.
    upstream: Option<Upstream>,
    /// The request head as forwarded, then the first of its body.
    scratch: Vec<u8>,
    /// The response head as forwarded, then the first of its body.
    response_scratch: Vec<u8>,
}

#[derive(Debug, PartialEq, Eq)]
enum Next {
    Another,
    Close,
}

/// The note on a request routed here while this supervisor stops: the
/// sandbox's front port sends it to its own copy, as when the relay says
/// this supervisor is not connected.
const SENT_BACK: &str = "sent back to the sandbox's own copy: this supervisor is stopping";

/// Forwards one request and its response.
async fn exchange<C: ClientIo>(
    client: &mut C,
    link: &mut Link,
    request: RequestHead,
    context: &Arc<Context>,
    connection: &ClientConnection,
) -> Next {
    let arrived = Instant::now();
    let head = &link.inbound.filled()[..request.len];
    let given = request.traceparent;
    let replay = request.replay.as_ref().map(|value| &head[value.clone()]);
    let own_route = request.route(head);
    let mut arrival = Arrival::new(context, connection, arrived, (given, replay, own_route)).await;
    if request.has_fallback() && context.routed.leaving() {
        context.routed.sent_back();
        let capture = arrival.begin(context, captured(&request, &link.inbound.filled()[..request.len]));
        if let Some(capture) = &capture {
            capture.note(SENT_BACK.to_owned());
        }
        let response = crate::tunnel::relay::not_connected(&context.service, None);
        send_answer(client, &response, capture).await;
        linger(client).await;
        return Next::Close;
    }
    // A request with a developer's route (its own, or its caller's) goes to
    // their copy, when there is one.
    let (routing, note) = context.routing(arrival.route());
    let inferred = arrival.route().filter(|_| own_route.is_none()).map(str::to_owned);
    let mut routed = match routing {
        Some((route, copy)) => {
            let body = hold_body(client, &mut link.inbound, &request, context.timeouts.head).await;
            let head = link.inbound.filled()[..request.len].to_vec();
            Some(Routed {
                route,
                copy,
                head,
                body,
            })
        }
        None => None,
    };
    let ready = match &routed {
        Some(routed) => Ok(context.target(&routed.copy.backend)),
        None => context.ready_backend().await,
    };
    arrival.waited(arrived.elapsed());
    let host = ready.as_ref().ok().and_then(|target| target.host.clone());
    let head = &link.inbound.filled()[..request.len];
    let client_baggage = request.baggage.as_ref().map(|v| &head[v.clone()]);
    let baggage = context.leaving_baggage(host.is_some(), client_baggage, inferred.as_deref());
    let own_baggage = routed
        .as_ref()
        .and_then(|_| context.leaving_baggage(false, client_baggage, inferred.as_deref()));
    let rewrites = Rewrites {
        host: host.as_deref(),
        baggage: baggage.as_deref(),
        access: routed.as_ref().and_then(|r| r.copy.access.as_deref()),
        fallback: routed.as_ref().is_some_and(Routed::resendable),
    };
    write_request_head(&mut link.scratch, head, &request, arrival.trace(), rewrites);
    // Where a route took the request, for the inspector.
    let route_note = std::sync::Mutex::new(note);
    // Capture begins once the head is on its way: its bookkeeping overlaps
    // the service's own time.
    let begin = |head: &[u8]| {
        let capture = arrival.begin(context, captured(&request, head));
        let note = route_note.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let (Some(capture), Some(note)) = (&capture, note) {
            capture.note(note);
        }
        capture
    };
    link.inbound.consume(request.len);
    if let Some(why) = request.ambiguous {
        let message = format!(
            "devmesh: {why}; refused so that the service never reads a second request out of its body \
             (front port of `{}`)\n",
            context.service
        );
        answer(client, StatusCode::BAD_REQUEST, &message, begin(&link.scratch)).await;
        linger(client).await;
        return Next::Close;
    }

    let (latency, act) = context.faults.next();
    if let Some(latency) = latency {
        tokio::time::sleep(latency).await;
    }
    match act {
        Act::Forward => {}
        Act::Answer(status) => {
            let message = context.faults.message(&context.service);
            answer(client, status, &message, begin(&link.scratch)).await;
            return Next::Close;
        }
        Act::Drop | Act::Reset => {
            if let Some(capture) = begin(&link.scratch) {
                let how = if act == Act::Drop { "closed" } else { "reset" };
                capture.end(
                    None,
                    None,
                    Some(format!("{how} with no answer by a fault set on the front port")),
                );
            }
            if act == Act::Reset {
                client.reset_on_close();
            }
            return Next::Close;
        }
    }

    let (mut addr, mut lease) = match ready {
        Ok(target) => (target.addr, target.lease),
        Err(message) => {
            let capture = begin(&link.scratch);
            answer(client, StatusCode::SERVICE_UNAVAILABLE, &message, capture).await;
            return Next::Close;
        }
    };
    // A kept connection may have been closed under a request that was
    // already written; one that may be sent twice (RFC 9110 §9.2.2) and has
    // no body is sent again on a new one. Any other gets a 502: it may have
    // been received, and a second copy could charge a card twice.
    let retryable = request.idempotent && request.body == Framing::Length(0);
    let mut kept = link
        .upstream
        .take()
        .filter(|u| u.addr == addr && u.is_usable())
        .or_else(|| context.pool.take(addr));
    let limit = context.inspector.store.config.max_body;
    let mut request_seen = Seen::default();
    let mut response_seen = Seen::default();
    let mut capture = None;
    // A crashed instance is waited through as a restart is, up to
    // `run.ready_timeout` from the request's arrival.
    let hold_until = arrived + context.timeouts.ready;
    let next_instance = async |failed: &Lease, had_it: bool| match Instant::now() < hold_until {
        true => context.next_instance(failed, had_it).await,
        false => None,
    };
    // A request a developer's copy did not take (`why`) goes, as the client
    // sent it, to the sandbox's own, which the inspector says.
    let own_rewrites = Rewrites {
        baggage: own_baggage.as_deref(),
        ..Rewrites::default()
    };
    let to_own_copy = async |link: &mut Link,
                             seen: &mut Seen,
                             routed: Routed,
                             why: &str,
                             capture: &Option<Capture>,
                             note: &std::sync::Mutex<Option<String>>| {
        let own = context.ready_backend().await.ok()?;
        let note_text = format!(
            "route `{}`: its copy at {} {why}; the sandbox's own answered",
            routed.route, routed.copy.url
        );
        match capture {
            Some(capture) => capture.note(note_text),
            None => *note.lock().unwrap_or_else(|e| e.into_inner()) = Some(note_text),
        }
        write_request_head(&mut link.scratch, &routed.head, &request, arrival.trace(), own_rewrites);
        // Its body is captured as it goes again.
        *seen = Seen::default();
        if let Some(body) = &routed.body {
            link.inbound.put_back(body);
        }
        Some(own)
    };
    loop {
        let reused = kept.is_some();
        let mut upstream = match kept.take() {
            Some(upstream) => upstream,
            None => match Upstream::connect(addr).await {
                Ok(upstream) => upstream,
                Err(e) => {
                    // A developer's copy that cannot be reached: the
                    // sandbox's own serves the request, and says so.
                    if let Some(copy) = routed.take_if(|r| !r.copy.strict) {
                        let why = format!("did not answer ({e})");
                        let seen = &mut request_seen;
                        if let Some(own) = to_own_copy(link, seen, copy, &why, &capture, &route_note).await {
                            (addr, lease) = (own.addr, own.lease);
                            continue;
                        }
                    }
                    // Refused: the instance is gone (killed, crashed) and
                    // nothing was sent, so any request waits for the next
                    // one, as during a restart. (A kept connection that was
                    // closed under a request comes here too, for the
                    // requests that may be sent again: see `retryable`.)
                    if let Some(next) = next_instance(&lease, false).await {
                        (addr, lease) = (next.addr, next.lease);
                        continue;
                    }
                    let message = context.did_not_answer(addr, &e.to_string());
                    let capture = capture.or_else(|| begin(&link.scratch));
                    answer(client, StatusCode::BAD_GATEWAY, &message, capture).await;
                    return Next::Close;
                }
            },
        };
        let outcome = forward(
            client,
            link,
            &mut upstream,
            &request,
            Sending {
                limit,
                lease: &lease,
                response_timeout: context.timeouts.response,
                routed: routed.is_some(),
            },
            BodiesSeen {
                request: &mut request_seen,
                response: &mut response_seen,
            },
            Capturing {
                capture: &mut capture,
                begin: &begin,
                forwarded: Instant::now(),
            },
        )
        .await;
        let response = match outcome {
            Ok(response) => response,
            // The relay sent nothing on: the developer's supervisor is gone.
            Err(Failure::NotConnected(e)) => {
                upstream.retire();
                if let Some(copy) = routed.take() {
                    copy.copy.connected.store(false, Ordering::Relaxed);
                    if copy.resendable() {
                        let why = "is not connected to the relay";
                        let seen = &mut request_seen;
                        if let Some(own) = to_own_copy(link, seen, copy, why, &capture, &route_note).await {
                            (addr, lease) = (own.addr, own.lease);
                            continue;
                        }
                    }
                }
                let message = context.did_not_answer(addr, &e);
                let capture = capture.or_else(|| begin(&link.scratch));
                answer(client, StatusCode::SERVICE_UNAVAILABLE, &message, capture).await;
                return Next::Close;
            }
            // The head is still in `link.scratch` (see `Relay::body`).
            Err(Failure::NoResponse(_)) if reused && retryable => {
                upstream.retire();
                continue;
            }
            Err(Failure::NoResponse(e) | Failure::Service(e)) => {
                upstream.retire();
                // A developer's copy that went with the request (its
                // supervisor killed): one that may be sent twice goes to
                // the sandbox's own, its body with it.
                if request.idempotent
                    && let Some(copy) = routed.take_if(|r| r.resendable())
                {
                    let why = format!("went with the request ({e})");
                    let seen = &mut request_seen;
                    if let Some(own) = to_own_copy(link, seen, copy, &why, &capture, &route_note).await {
                        (addr, lease) = (own.addr, own.lease);
                        continue;
                    }
                }
                // The instance died with the request: one that may be sent
                // twice goes to the next instance if this one was killed
                // from outside; else it is answered as it is (it may be
                // what crashed the service, and would crash the next).
                if retryable
                    && !reused
                    && let Some(next) = next_instance(&lease, true).await
                {
                    (addr, lease) = (next.addr, next.lease);
                    continue;
                }
                let message = context.did_not_answer(addr, &e);
                let capture = capture.or_else(|| begin(&link.scratch));
                answer(client, StatusCode::BAD_GATEWAY, &message, capture).await;
                return Next::Close;
            }
            Err(Failure::TimedOut) => {
                upstream.retire();
                let message = context.no_response_in_time(addr);
                let capture = capture.or_else(|| begin(&link.scratch));
                answer(client, StatusCode::GATEWAY_TIMEOUT, &message, capture).await;
                return Next::Close;
            }
            Err(Failure::BadRequest(e)) => {
                upstream.retire();
                let message = format!("devmesh: {e} (front port of `{}`)\n", context.service);
                let capture = capture.or_else(|| begin(&link.scratch));
                answer(client, StatusCode::BAD_REQUEST, &message, capture).await;
                return Next::Close;
            }
            Err(Failure::Broken(e)) => {
                if let Some(capture) = capture.or_else(|| begin(&link.scratch)) {
                    capture.end(Some(request_seen), Some(response_seen), Some(e));
                }
                upstream.retire();
                return Next::Close;
            }
            Err(Failure::ClientClosed) => {
                response_seen.abandoned = true;
                if let Some(capture) = capture.or_else(|| begin(&link.scratch)) {
                    capture.end(Some(request_seen), Some(response_seen), None);
                }
                upstream.retire();
                return Next::Close;
            }
        };
        if response.upgraded() {
            let upgrade = request.upgrade.as_deref().unwrap_or("tunnel");
            if let Some(capture) = &mut capture {
                capture.upgraded(upgrade);
                capture.publish();
            }
            let piped = pipe_upgraded(client, &mut link.inbound, &mut upstream).await;
            if let Some(capture) = capture {
                let (up, down, error) = match piped {
                    Ok((up, down)) => (up, down, None),
                    Err(e) => (0, 0, Some(e.to_string())),
                };
                // However the pipe ended (a reset, an EOF), a stopped
                // instance is why.
                let error = if lease.was_cut() { Some(CUT.to_owned()) } else { error };
                capture.end_stream(up, down, error);
            }
            return Next::Close;
        }
        if let Some(capture) = capture {
            capture.end(Some(request_seen), Some(response_seen), None);
        }
        if !response.request_sent {
            // The service answered without reading the whole body (a 413,
            // say): the rest of it is still coming from the client, so
            // neither connection can carry another request.
            upstream.retire();
            linger(client).await;
            return Next::Close;
        }
        if request.keep_alive && response.head.keep_alive {
            link.upstream = Some(upstream);
            return Next::Another;
        }
        upstream.retire();
        return Next::Close;
    }
}

/// What the inspector records of `request`, whose head is `head`.
fn captured<'h>(request: &RequestHead, head: &'h [u8]) -> capture::Request<'h> {
    capture::Request {
        method: request.method(head),
        target: request.target(head),
        version: if request.minor == 0 { "HTTP/1.0" } else { "HTTP/1.1" },
        headers: Headers::from_lines(&head[request.fields_at..head.len() - 2]),
    }
}

/// A request its route took to a developer's copy, as the client sent it:
/// should the copy not take it, the sandbox's own does.
struct Routed {
    route: String,
    copy: RoutedCopy,
    head: Vec<u8>,
    /// Its body, whole, when it has one short enough to hold.
    body: Option<Vec<u8>>,
}

impl Routed {
    /// Whether it can still go elsewhere once sent to the relay: it has no
    /// body, or one held whole, and its route is not strict.
    fn resendable(&self) -> bool {
        self.body.is_some() && !self.copy.strict
    }
}

/// The body of `request`, read whole into `inbound` behind its head, when
/// it has a `content-length` that fits there. `Some(empty)` for a request
/// with none; `None` for one too long to hold, chunked, waiting for a
/// `100 Continue`, or not coming.
async fn hold_body<C: ClientIo>(
    client: &mut C,
    inbound: &mut Buffer,
    request: &RequestHead,
    timeout: Duration,
) -> Option<Vec<u8>> {
    let Framing::Length(length) = request.body else {
        return None;
    };
    if request.expects_continue && length > 0 {
        return None;
    }
    let end = request.len.checked_add(usize::try_from(length).ok()?)?;
    if end > relay::MAX_HEAD {
        return None;
    }
    let filled = async {
        while inbound.filled().len() < end {
            if inbound.fill(client).await.ok()? == 0 {
                return None;
            }
        }
        Some(())
    };
    tokio::time::timeout(timeout, filled).await.ok()??;
    Some(inbound.filled()[request.len..end].to_vec())
}

/// What the relay said in `head` when it answered for a developer's copy
/// whose supervisor is not connected, having sent nothing on.
fn not_connected(head: &[u8]) -> Option<String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    response.parse(head).ok()?;
    let name = crate::tunnel::relay::callers::NOT_CONNECTED_HEADER;
    let service = response.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name))?;
    Some(format!(
        "the relay says `{}` is not connected (its supervisor is not running)",
        String::from_utf8_lossy(service.value)
    ))
}

/// Closes a connection without a reset: stop sending, then read what the
/// other end still sends for a moment. Closing with unread bytes resets the
/// connection: a client could lose the answer to a request whose body was
/// not read to its end (nginx's `lingering_close` does the same), and a
/// service would log a `ConnectionResetError` for the rest of an answer
/// that a client left before.
async fn linger<C: ClientIo>(client: &mut C) {
    const LINGER: Duration = Duration::from_secs(2);
    const MAX_DRAINED: usize = 4 * 1024 * 1024;
    let _ = client.shutdown().await;
    let mut drained = 0;
    let mut sink = [0u8; 16 * 1024];
    let _ = tokio::time::timeout(LINGER, async {
        while drained < MAX_DRAINED {
            match client.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(n) => drained += n,
            }
        }
    })
    .await;
}

/// What the head the service sees has in place of the client's.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Rewrites<'a> {
    /// The `Host` of a remote instance.
    pub host: Option<&'a str>,
    /// The `baggage` it leaves with (see `Context::leaving_baggage`).
    pub baggage: Option<&'a str>,
    /// A team token for a developer's tunnel (`x-devmesh-access`), which
    /// the relay takes off.
    pub access: Option<&'a str>,
    /// Asks the relay to answer at once when the developer's supervisor is
    /// not connected (`x-devmesh-fallback`): the request then goes to the
    /// sandbox's own copy.
    pub fallback: bool,
}

/// Writes the head the service sees into `out`: as it came, less the
/// replay line, with the `traceparent` of its span at the front port when
/// traffic is captured (see [`Trace`]), and `rewrites`.
pub(crate) fn write_request_head(
    out: &mut Vec<u8>,
    head: &[u8],
    request: &RequestHead,
    trace: Option<Trace>,
    Rewrites {
        host,
        baggage,
        access,
        fallback,
    }: Rewrites<'_>,
) {
    out.clear();
    // Lines for the relay: a service here never sees them, and a routed
    // request carries this port's own. (A caller of a remote copy behind a
    // private tunnel may send its own token.)
    let for_relay = host.is_none() || access.is_some();
    let taken = |line: Owned| match line {
        Owned::Replay => true,
        Owned::TraceParent => trace.is_some(),
        Owned::Host => host.is_some(),
        Owned::Baggage => baggage.is_some(),
        Owned::Access | Owned::Fallback => for_relay,
    };
    let mut at = 0;
    for line in request.owned.lines(taken) {
        out.extend_from_slice(&head[at..line.start]);
        at = line.end;
    }
    out.extend_from_slice(&head[at..request.blank_at]);
    if let Some(host) = host {
        out.extend_from_slice(b"host: ");
        out.extend_from_slice(host.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(trace) = trace {
        out.extend_from_slice(b"traceparent: ");
        out.extend_from_slice(&trace.header.header());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(baggage) = baggage {
        out.extend_from_slice(b"baggage: ");
        out.extend_from_slice(baggage.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(access) = access {
        out.extend_from_slice(crate::tunnel::relay::callers::ACCESS_HEADER.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(access.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if fallback {
        out.extend_from_slice(crate::tunnel::relay::callers::FALLBACK_HEADER.as_bytes());
        out.extend_from_slice(b": own\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// The bodies' captures of one exchange.
struct BodiesSeen<'a> {
    request: &'a mut Seen,
    response: &'a mut Seen,
}

/// How forwarding went wrong.
#[derive(Debug)]
enum Failure {
    /// The instance closed or failed before any of its response came.
    NoResponse(String),
    /// The relay answered for a developer's copy whose supervisor is not
    /// connected, having sent nothing on (see `Rewrites::fallback`).
    NotConnected(String),
    /// The instance sent a broken response head: the client can be told.
    Service(String),
    /// No response head came within `run.response_timeout`: a 504.
    TimedOut,
    /// The client's body broke its framing before any of the response was
    /// sent: a 400.
    BadRequest(String),
    /// Either side broke off once the response had started, or the client
    /// left: the connection ends.
    Broken(String),
    /// The client closed once it had the response's head, before the rest
    /// (a client that reads a status and drops the body): answered, not
    /// failed (see [`Seen::abandoned`]).
    ClientClosed,
}

/// What shapes the forwarding of one request.
struct Sending<'a> {
    /// Bytes of a body kept for the inspector.
    limit: usize,
    /// The instance, held; told when the response is long in coming.
    lease: &'a Lease,
    response_timeout: Duration,
    /// Whether it goes to a developer's copy, through the relay.
    routed: bool,
}

/// The final response to a forwarded request.
struct Forwarded {
    head: ResponseHead,
    /// Whether all of the request body went out (an instance may answer
    /// before reading it, and the client may then stop sending it).
    request_sent: bool,
}

impl Forwarded {
    fn upgraded(&self) -> bool {
        self.head.status == 101
    }
}

/// Where an exchange's capture is: begun by `forward` once the head is on
/// its way (or before, for a request with a body).
struct Capturing<'a> {
    capture: &'a mut Option<Capture>,
    /// Begins capture given the head as forwarded; `None` when capture is off.
    begin: &'a (dyn Fn(&[u8]) -> Option<Capture> + Sync),
    /// When the request went to the instance.
    forwarded: Instant,
}

/// Sends the request in `link.scratch` (its head) and its body, and relays
/// the response, at once: an instance may answer before it reads the body.
/// Meanwhile the client is watched: one that leaves frees the instance's
/// connection instead of holding it until the answer comes.
async fn forward<C: ClientIo>(
    client: &mut C,
    link: &mut Link,
    upstream: &mut Upstream,
    request: &RequestHead,
    sending: Sending<'_>,
    bodies: BodiesSeen<'_>,
    capturing: Capturing<'_>,
) -> Result<Forwarded, Failure> {
    let Capturing {
        capture,
        begin,
        forwarded,
    } = capturing;
    let (mut client_read, mut client_write) = client.split();
    let (mut upstream_read, mut upstream_write) = upstream.stream.split();
    let has_body = request.body != Framing::Length(0);
    if !has_body {
        // Only the head goes out; it fits in the socket's buffer.
        upstream_write
            .write_all(&link.scratch)
            .await
            .map_err(|e| Failure::NoResponse(e.to_string()))?;
        bodies.request.finished = true;
    }
    // Capture begins once a body-less request is on its way, so that its
    // bookkeeping overlaps the service's time.
    if capture.is_none() {
        *capture = begin(&link.scratch);
    }
    let responding = AtomicBool::new(false);
    let body_sent = AtomicBool::new(!has_body);
    let mut send = std::pin::pin!(async {
        if has_body {
            let to_service = Relay {
                buffer: &mut link.inbound,
                from: &mut client_read,
                to: &mut upstream_write,
                limit: sending.limit,
            };
            if let Err(e) = to_service.body(&mut link.scratch, request.body, bodies.request).await {
                return Interrupted::Body(e);
            }
            body_sent.store(true, Ordering::Relaxed);
        }
        client_left(&mut client_read).await;
        Interrupted::ClientLeft
    });
    let response_relay = Relay {
        buffer: &mut upstream.buffer,
        from: &mut upstream_read,
        to: &mut client_write,
        limit: sending.limit,
    };
    let receiving = Receiving {
        capture: capture.as_mut().map(|c| (c, forwarded)),
        lease: sending.lease,
        timeout: sending.response_timeout,
        responding: &responding,
        routed: sending.routed,
    };
    let mut receive = std::pin::pin!(receive(
        response_relay,
        &mut link.response_scratch,
        request,
        bodies.response,
        receiving
    ));
    // Set when the service stopped reading the body: its answer may still come.
    let mut unsent = None;
    // Set when the client closed after the answer's head went to it: the
    // answer is relayed as far as the client takes it.
    let mut closed_after_head = false;
    loop {
        tokio::select! {
            interrupted = &mut send, if unsent.is_none() && !closed_after_head => match interrupted {
                Interrupted::ClientLeft if responding.load(Ordering::Relaxed) => closed_after_head = true,
                Interrupted::ClientLeft => return Err(Failure::Broken("the client left before the answer".to_owned())),
                Interrupted::Body(Broken::Sink(e) | Broken::HeadSink(e)) => unsent = Some(e),
                Interrupted::Body(Broken::Framing(e)) if !responding.load(Ordering::Relaxed) => {
                    return Err(Failure::BadRequest(e.to_string()));
                }
                Interrupted::Body(e) => return Err(Failure::Broken(format!("the request body: {e}"))),
            },
            head = &mut receive => {
                let request_sent = body_sent.load(Ordering::Relaxed);
                return match head {
                    Ok(head) => Ok(Forwarded { head, request_sent }),
                    Err(Failure::NoResponse(e)) if unsent.is_some() => Err(Failure::NoResponse(format!(
                        "it stopped reading the request ({}) and then {e}",
                        unsent.as_ref().expect("checked")
                    ))),
                    Err(e) => Err(e),
                };
            }
        }
    }
}

/// How a response is awaited.
struct Receiving<'a> {
    /// The capture, and when the request went to the instance.
    capture: Option<(&'a mut Capture, Instant)>,
    /// Told when the response is long in coming (see [`awaited`]).
    lease: &'a Lease,
    /// How long the head may take.
    timeout: Duration,
    /// Set once anything of the response went to the client.
    responding: &'a AtomicBool,
    /// Whether the request went to a developer's copy, through the relay.
    routed: bool,
}

/// Reads the response to `request`, passing interim ones (`100 Continue`)
/// on, and relays the final one; returns its head.
async fn receive<R, W>(
    relay: Relay<'_, R, W>,
    scratch: &mut Vec<u8>,
    request: &RequestHead,
    seen: &mut Seen,
    receiving: Receiving<'_>,
) -> Result<ResponseHead, Failure>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let Receiving {
        mut capture,
        lease,
        timeout,
        responding,
        routed,
    } = receiving;
    let heads = async {
        let mut answered = false;
        loop {
            let head = match read_head(relay.buffer, relay.from, |buf| ResponseHead::parse(buf, request)).await {
                Ok(Some(head)) => head,
                Ok(None) if !answered => return Err(Failure::NoResponse("it closed the connection".to_owned())),
                Ok(None) => return Err(Failure::Broken("the service closed the connection".to_owned())),
                Err(ReadError::Io(e)) if !answered => return Err(Failure::NoResponse(e.to_string())),
                Err(e) => return Err(Failure::Service(format!("its response: {e}"))),
            };
            if routed && head.status == 503 {
                let head = &relay.buffer.filled()[..head.len];
                if let Some(said) = not_connected(head) {
                    return Err(Failure::NotConnected(said));
                }
            }
            responding.store(true, Ordering::Relaxed);
            if !head.is_interim() {
                return Ok(head);
            }
            relay
                .to
                .write_all(&relay.buffer.filled()[..head.len])
                .await
                .map_err(|e| Failure::Broken(format!("the client: {e}")))?;
            relay.buffer.consume(head.len);
            answered = true;
        }
    };
    let head = awaited(heads, lease, timeout).await.unwrap_or(Err(Failure::TimedOut))?;
    let filled = relay.buffer.filled();
    let replay_id = capture.as_ref().and_then(|(c, _)| c.replay_id());
    write_response_head(scratch, filled, &head, replay_id);
    if let Some((capture, forwarded)) = &mut capture {
        let lines = Headers::from_lines(&scratch[head.fields_at..scratch.len() - (head.len - head.blank_at)]);
        capture.respond(head.status, lines, Some(forwarded.elapsed()));
        let whole = matches!(head.body, Framing::Length(n) if (filled.len() - head.len) as u64 >= n);
        if !whole {
            capture.publish();
        }
    }
    relay.buffer.consume(head.len);
    relay.body(scratch, head.body, seen).await.map_err(|e| match e {
        Broken::HeadSink(e) => Failure::Broken(format!("the client left before the answer: {e}")),
        // The head went out with the first of the body: the client had its
        // answer's status, and chose not to read on.
        Broken::Sink(_) => Failure::ClientClosed,
        e => Failure::Broken(format!("the response body: {e}")),
    })?;
    Ok(head)
}

/// Writes the head the client sees into `out`: the service's, less the
/// `Content-Length` lines beside a chunked body, with the exchange's id
/// for the inspector's replay when it has one.
pub(crate) fn write_response_head(out: &mut Vec<u8>, head_bytes: &[u8], head: &ResponseHead, replay_id: Option<u64>) {
    out.clear();
    let mut at = 0;
    for stale in &head.stale_length {
        out.extend_from_slice(&head_bytes[at..stale.start]);
        at = stale.end;
    }
    out.extend_from_slice(&head_bytes[at..head.blank_at]);
    // A head full of lines goes on without the id: replay is the
    // inspector's, the answer the client's.
    if let Some(id) = replay_id.filter(|_| head.has_room) {
        out.extend_from_slice(format!("{EXCHANGE_HEADER}: {id}\r\n").as_bytes());
    }
    out.extend_from_slice(&head_bytes[head.blank_at..head.len]);
}

/// Why sending a request stopped before its answer came.
enum Interrupted {
    /// Its body did not pass.
    Body(Broken),
    /// The whole request went out, and then the client closed.
    ClientLeft,
}

/// Returns once the client has closed the connection (or broken it). A
/// client that sends more meanwhile (a pipelined request) is not gone:
/// this then waits for ever, and the bytes stay for the next read.
async fn client_left(client: &mut impl Peek) {
    match super::client::peek(client, &mut [0u8; 1]).await {
        Ok(0) | Err(_) => {}
        Ok(_) => std::future::pending().await,
    }
}

/// Once a `101 Switching Protocols` has passed, the connection is the
/// client's and the instance's: bytes go both ways until either closes.
async fn pipe_upgraded<C: ClientIo>(
    client: &mut C,
    inbound: &mut Buffer,
    upstream: &mut Upstream,
) -> io::Result<(u64, u64)> {
    let early_up = inbound.filled().len() as u64;
    upstream.stream.write_all(inbound.filled()).await?;
    inbound.consume(inbound.filled().len());
    let early_down = upstream.buffer.filled().len() as u64;
    client.write_all(upstream.buffer.filled()).await?;
    let (up, down) = tokio::io::copy_bidirectional(client, &mut upstream.stream).await?;
    Ok((early_up + up, early_down + down))
}

/// Answers the client from the proxy itself, and records that answer.
async fn answer<C: ClientIo>(client: &mut C, status: StatusCode, message: &str, capture: Option<Capture>) {
    send_answer(client, &super::local_response(status, message), capture).await;
}

/// Sends `response`, an answer of the proxy's own with a text body, and
/// records it.
async fn send_answer<C: ClientIo>(client: &mut C, response: &[u8], capture: Option<Capture>) {
    let _ = client.write_all(response).await;
    let Some(capture) = capture else {
        return;
    };
    let head_end = response.windows(4).position(|w| w == b"\r\n\r\n").map_or(0, |i| i + 4);
    let fields_at = response.iter().position(|&b| b == b'\n').map_or(0, |i| i + 1);
    let headers = Headers::from_lines(&response[fields_at..head_end.max(fields_at + 2) - 2]);
    let status = response
        .get(9..12)
        .and_then(|s| std::str::from_utf8(s).ok()?.parse().ok())
        .unwrap_or(0);
    capture.end_answered(status, headers, &String::from_utf8_lossy(&response[head_end..]));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remote_instance_is_asked_with_its_own_host_and_the_replay_line_never_passes() {
        let head = b"GET /a HTTP/1.1\r\nHost: 127.0.0.1:24001\r\nx-devmesh-replay: 7 key\r\naccept: */*\r\n\r\n";
        let request = RequestHead::parse(head).unwrap().unwrap();
        let mut out = Vec::new();
        let rewrites = Rewrites {
            host: Some("orders.sandbox:8080"),
            ..Rewrites::default()
        };
        write_request_head(&mut out, head, &request, None, rewrites);
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            "GET /a HTTP/1.1\r\naccept: */*\r\nhost: orders.sandbox:8080\r\n\r\n"
        );
        write_request_head(&mut out, head, &request, None, Rewrites::default());
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET /a HTTP/1.1\r\nHost: 127.0.0.1:24001\r\naccept: */*\r\n\r\n",
            "a local instance sees the client's"
        );
    }

    #[test]
    fn the_relays_lines_never_reach_a_service_here_and_a_routed_request_carries_its_own() {
        let head = b"POST /orders HTTP/1.1\r\nx-devmesh-access: team-token\r\nHost: a\r\n\
                     x-devmesh-fallback: own\r\ncontent-length: 0\r\n\r\n";
        let request = RequestHead::parse(head).unwrap().unwrap();
        assert!(request.has_fallback());
        let mut out = Vec::new();
        write_request_head(&mut out, head, &request, None, Rewrites::default());
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            "POST /orders HTTP/1.1\r\nHost: a\r\ncontent-length: 0\r\n\r\n"
        );
        let routed = Rewrites {
            host: Some("relay:31000"),
            access: Some("sandbox-token"),
            fallback: true,
            ..Rewrites::default()
        };
        write_request_head(&mut out, head, &request, None, routed);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /orders HTTP/1.1\r\ncontent-length: 0\r\nhost: relay:31000\r\n\
             x-devmesh-access: sandbox-token\r\nx-devmesh-fallback: own\r\n\r\n"
        );
    }
}
