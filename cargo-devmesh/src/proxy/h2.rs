//! HTTP/2 forwarding (h2c with prior knowledge, as gRPC clients speak it),
//! stream by stream through hyper, to an HTTP/2 connection pool per front
//! port.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode, header};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::capture::{self, Arrival, Capture};
use super::fault::Act;
use super::{ClientConnection, Context, Target, awaited};
use crate::inspector::trace::TraceParent;
use crate::inspector::{EXCHANGE_HEADER, Headers, REPLAY_HEADER, Seen, Tee};
use crate::tunnel::relay::callers::{ACCESS_HEADER, FALLBACK_HEADER, NOT_CONNECTED_HEADER};

type Body = BoxBody<Bytes, hyper::Error>;

/// The request body as forwarded: captured on its way, and given back
/// when the request is dropped before any of it was read.
pub type Captured = Returnable<Tee<Incoming>>;

/// A stream a fault drops: hyper resets it.
#[derive(Debug)]
pub struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("dropped by a fault set on the front port")
    }
}

impl std::error::Error for Dropped {}

/// Serves one client connection that opened with the HTTP/2 preface.
pub async fn serve<C: super::ClientIo>(stream: C, context: Arc<Context>, connection: Arc<ClientConnection>) {
    let service =
        hyper::service::service_fn(move |request| forward(request, Arc::clone(&context), Arc::clone(&connection)));
    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

async fn forward(
    mut request: Request<Incoming>,
    context: Arc<Context>,
    connection: Arc<ClientConnection>,
) -> Result<Response<Body>, Dropped> {
    let arrived = Instant::now();
    let grpc = is_grpc(&request);
    let replay = request.headers_mut().remove(REPLAY_HEADER);
    let given = request
        .headers()
        .get("traceparent")
        .and_then(|v| TraceParent::parse(v.to_str().ok()?));
    let own_route = request
        .headers()
        .get(devmesh::route::HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(devmesh::route::of_baggage);
    let mut arrival = Arrival::new(
        &context,
        &connection,
        arrived,
        (given, replay.as_ref().map(|v| v.as_bytes()), own_route),
    )
    .await;
    // A request with a developer's route (its own, or its caller's) goes to
    // their copy, when there is one.
    let (mut routed, note) = context.routing(arrival.route());
    let inferred = arrival.route().filter(|_| own_route.is_none()).map(str::to_owned);
    let ready = match &routed {
        Some((_, copy)) => Ok(context.target(&copy.backend)),
        None => context.ready_backend().await,
    };
    arrival.waited(arrived.elapsed());
    if let Some(trace) = arrival.trace()
        && let Ok(value) = header::HeaderValue::from_bytes(&trace.header.header())
    {
        request.headers_mut().insert("traceparent", value);
    }
    let capture = arrival.begin(
        &context,
        capture::Request {
            method: request.method().as_str(),
            target: request.uri().path_and_query().map_or("/", |p| p.as_str()),
            version: "HTTP/2.0",
            headers: Headers::new(request.headers()),
        },
    );
    let (latency, act) = context.faults.next();
    if let Some(latency) = latency {
        tokio::time::sleep(latency).await;
    }
    match act {
        Act::Forward => {}
        Act::Answer(status) => return Ok(answer(capture, status, context.faults.message(&context.service), grpc)),
        Act::Drop | Act::Reset => {
            if let Some(capture) = capture {
                capture.end(
                    None,
                    None,
                    Some("reset with no answer by a fault set on the front port".to_owned()),
                );
            }
            return Err(Dropped);
        }
    }
    let Target {
        mut addr,
        mut host,
        mut lease,
    } = match ready {
        Ok(target) => target,
        Err(message) => return Ok(answer(capture, StatusCode::SERVICE_UNAVAILABLE, message, grpc)),
    };
    if let (Some(capture), Some(note)) = (&capture, note) {
        capture.note(note);
    }
    let limit = context.inspector.store.config.max_body;
    let request_capture = capture.as_ref().map(|c| (Arc::clone(&context), c.open(), c.arrived()));
    let (head, body) = request.into_parts();
    // One that may be sent twice (RFC 9110 §9.2.2) and has no body is sent
    // again after its instance died with it, as over HTTP/1.
    let retryable = head.method.is_idempotent() && hyper::body::Body::is_end_stream(&body);
    let mut body = Some(Tee::new(
        body,
        if request_capture.is_some() { limit } else { 0 },
        move |mut seen| {
            if let Some((context, open, arrived)) = request_capture {
                let (size, body) = (seen.size, seen.take_body(arrived));
                context.inspector.store.update(open, |e| {
                    e.bytes_up = size;
                    e.request_body = body;
                });
            }
        },
    ));
    // A crashed instance is waited through as a restart is, up to
    // `run.ready_timeout` from the request's arrival.
    let hold_until = arrived + context.timeouts.ready;
    let (forwarded, mut response) = loop {
        let (given_back, mut returned) = tokio::sync::oneshot::channel();
        let mut request = Request::new(Returnable {
            body: body.take(),
            given_back: Some(given_back),
        });
        *request.method_mut() = head.method.clone();
        *request.version_mut() = head.version;
        *request.headers_mut() = head.headers.clone();
        let baggage = head.headers.get(devmesh::route::HEADER).map(|v| v.as_bytes());
        if let Some(baggage) = context.leaving_baggage(host.is_some(), baggage, inferred.as_deref())
            && let Ok(value) = header::HeaderValue::from_str(&baggage)
        {
            request.headers_mut().insert(devmesh::route::HEADER, value);
        }
        let access = routed.as_ref().and_then(|(_, copy)| copy.access.as_deref());
        // Lines for the relay: a service here never sees them, and a routed
        // request carries this port's own (as over HTTP/1).
        if host.is_none() || access.is_some() {
            request.headers_mut().remove(ACCESS_HEADER);
            request.headers_mut().remove(FALLBACK_HEADER);
        }
        if let Some((_, copy)) = &routed
            && let Some(access) = access.and_then(|a| header::HeaderValue::from_str(a).ok())
        {
            request.headers_mut().insert(ACCESS_HEADER, access);
            // Should the developer's supervisor not be connected, the
            // relay says so at once and the request goes to the own copy.
            if !copy.strict {
                request
                    .headers_mut()
                    .insert(FALLBACK_HEADER, header::HeaderValue::from_static("own"));
            }
        }
        // The pool wants the absolute form, and sends the origin form; a
        // remote instance is asked for by its own name.
        let path = head.uri.path_and_query().map_or("/", |p| p.as_str());
        let authority = host.as_ref().map_or_else(|| addr.to_string(), |host| host.to_string());
        *request.uri_mut() = format!("http://{authority}{path}")
            .parse()
            .expect("an address and a path make a URI");
        // An instance that speaks HTTP/1 only gets each stream as an
        // HTTP/1.1 request (as nginx and Envoy translate); its answer goes
        // back as a stream of this connection.
        let client = match context.speaks_http2(addr).await {
            true => &context.http2,
            false => {
                *request.version_mut() = hyper::Version::HTTP_11;
                &context.http1
            }
        };
        let forwarded = Instant::now();
        let error = match awaited(client.request(request), &lease, context.timeouts.response).await {
            // The relay sent nothing on: the developer's supervisor is gone.
            Some(Ok(response))
                if routed.is_some()
                    && response.status() == StatusCode::SERVICE_UNAVAILABLE
                    && response.headers().contains_key(NOT_CONNECTED_HEADER) =>
            {
                body = returned.try_recv().ok();
                let Some((route, copy)) = routed.take().filter(|_| body.is_some()) else {
                    break (forwarded, response);
                };
                copy.connected.store(false, std::sync::atomic::Ordering::Relaxed);
                let Ok(own) = context.ready_backend().await else {
                    break (forwarded, response);
                };
                if let Some(capture) = &capture {
                    capture.note(format!(
                        "route `{route}`: its copy at {} is not connected to the relay; the sandbox's own answered",
                        copy.url
                    ));
                }
                (addr, host, lease) = (own.addr, own.host, own.lease);
                continue;
            }
            Some(Ok(response)) => break (forwarded, response),
            Some(Err(e)) => e,
            None => {
                let message = context.no_response_in_time(addr);
                return Ok(answer(capture, StatusCode::GATEWAY_TIMEOUT, message, grpc));
            }
        };
        // Asked again next time: a restart may have changed what it speaks.
        context.forget_protocol(addr);
        // Refused (the instance is gone, and nothing was sent): any
        // request waits for the next instance, as during a restart. Lost
        // with the instance: only one that may be sent twice, when it was
        // killed from outside (see `Context::next_instance`).
        body = returned.try_recv().ok();
        let sent = !error.is_connect();
        // A developer's copy that cannot be reached, or that went with a
        // request that may be sent twice: the sandbox's own serves it, and
        // says so.
        if body.is_some()
            && (!sent || retryable)
            && let Some((route, copy)) = routed.take_if(|(_, copy)| !copy.strict)
            && let Ok(own) = context.ready_backend().await
        {
            if let Some(capture) = &capture {
                let what = if sent {
                    "went with the request"
                } else {
                    "did not answer"
                };
                capture.note(format!(
                    "route `{route}`: its copy at {} {what} ({error}); the sandbox's own answered",
                    copy.url
                ));
            }
            (addr, host, lease) = (own.addr, own.host, own.lease);
            continue;
        }
        if body.is_some()
            && (!sent || retryable)
            && Instant::now() < hold_until
            && let Some(next) = context.next_instance(&lease, sent).await
        {
            (addr, host, lease) = (next.addr, next.host, next.lease);
            continue;
        }
        let message = context.did_not_answer(addr, &error.to_string());
        return Ok(answer(capture, StatusCode::BAD_GATEWAY, message, grpc));
    };
    let Some(mut capture) = capture else {
        // The lease lasts until the body has passed: the instance is not
        // stopped while it still sends.
        return Ok(response.map(|body| BodyExt::boxed(Tee::new(body, 0, move |_| drop(lease)))));
    };
    if let Some(id) = capture.replay_id()
        && let Ok(value) = header::HeaderValue::from_str(&id.to_string())
    {
        response.headers_mut().insert(EXCHANGE_HEADER, value);
    }
    capture.respond(
        response.status().as_u16(),
        Headers::new(response.headers()),
        Some(forwarded.elapsed()),
    );
    capture.publish();
    Ok(response.map(move |body| {
        BodyExt::boxed(Tee::new(body, limit, move |seen: Seen| {
            drop(lease);
            capture.end(None, Some(seen), None);
        }))
    }))
}

impl Context {
    /// Whether the instance at `addr` speaks HTTP/2, asked once and
    /// remembered; an instance that cannot be asked is taken to (the
    /// request then fails as it would, and says why).
    async fn speaks_http2(&self, addr: SocketAddr) -> bool {
        let known = self
            .speaks_http2
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&addr)
            .copied();
        if let Some(known) = known {
            return known;
        }
        let Some(found) = speaks_http2(addr).await else {
            return true;
        };
        self.speaks_http2
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(addr, found);
        found
    }

    fn forget_protocol(&self, addr: SocketAddr) {
        self.speaks_http2
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&addr);
    }
}

/// A request body that is given back, unread, when the request is dropped
/// before any of it was asked for (a connection that could not be made):
/// the request can then go to another instance whole.
pub struct Returnable<B> {
    body: Option<B>,
    given_back: Option<tokio::sync::oneshot::Sender<B>>,
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for Returnable<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
        // Asked for: it is the request's now.
        self.given_back = None;
        match self.body.as_mut() {
            Some(body) => std::pin::Pin::new(body).poll_frame(cx),
            None => std::task::Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(B::is_end_stream)
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body
            .as_ref()
            .map_or_else(|| hyper::body::SizeHint::with_exact(0), B::size_hint)
    }
}

impl<B> Drop for Returnable<B> {
    fn drop(&mut self) {
        if let (Some(back), Some(body)) = (self.given_back.take(), self.body.take()) {
            let _ = back.send(body);
        }
    }
}

/// Asks the instance at `addr` whether it speaks HTTP/2 with prior
/// knowledge: it is sent the connection preface and an empty SETTINGS
/// frame, and an HTTP/2 server answers with a SETTINGS frame of its own
/// first. An HTTP/1 server answers with a status line (a 400, a 505) or
/// closes. `None`: it could not be told (no connection, no word in time).
pub async fn speaks_http2(addr: SocketAddr) -> Option<bool> {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";
    const SETTINGS: u8 = 0x04;
    let asked = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        stream.write_all(PREFACE).await.ok()?;
        let mut first = [0u8; 9];
        let mut read = 0;
        while read < 4 {
            match stream.read(&mut first[read..]).await {
                Ok(0) | Err(_) => return Some(false),
                Ok(n) => read += n,
            }
        }
        Some(first[3] == SETTINGS && !first.starts_with(b"HTTP"))
    };
    tokio::time::timeout(PROTOCOL_ASKED_WITHIN, asked).await.ok().flatten()
}

/// How long an instance has to answer [`speaks_http2`].
const PROTOCOL_ASKED_WITHIN: std::time::Duration = std::time::Duration::from_secs(2);

/// Whether `request` is a gRPC call (`application/grpc`, `+proto`, …).
fn is_grpc<B>(request: &Request<B>) -> bool {
    request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// The proxy's own answer, recorded. A gRPC call gets one gRPC clients
/// read: HTTP 200, trailers-only, with a `grpc-status` (UNAVAILABLE, or
/// DEADLINE_EXCEEDED for a 504) and the message as `grpc-message`; a
/// plain-text 503 made tonic report "invalid compression flag: 100".
fn answer(capture: Option<Capture>, status: StatusCode, message: String, grpc: bool) -> Response<Body> {
    let (code, body) = if grpc {
        (StatusCode::OK, Bytes::new())
    } else {
        (status, Bytes::from(message.clone()))
    };
    let mut response = Response::new(Full::new(body).map_err(|never| match never {}).boxed());
    *response.status_mut() = code;
    let headers = response.headers_mut();
    if grpc {
        let grpc_status = match status {
            StatusCode::GATEWAY_TIMEOUT => "4",
            _ => "14",
        };
        headers.insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/grpc"),
        );
        headers.insert("grpc-status", header::HeaderValue::from_static(grpc_status));
        if let Ok(value) = header::HeaderValue::from_str(&percent_encode(message.trim_end())) {
            headers.insert("grpc-message", value);
        }
    } else {
        headers.insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
    }
    if let Some(capture) = capture {
        let recorded = if grpc { "" } else { message.as_str() };
        capture.end_answered(code.as_u16(), Headers::new(response.headers()), recorded);
    }
    response
}

/// `grpc-message` is percent-encoded (the gRPC over HTTP/2 spec): bytes
/// outside printable ASCII, and `%`, as `%XX`.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if (0x20..0x7f).contains(&byte) && byte != b'%' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}
