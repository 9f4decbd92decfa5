//! Capture of one exchange, from its request head to its end, for both the
//! HTTP/1 forwarder and the HTTP/2 one. The store is touched when the
//! request enters (its trace), once the request is on its way (the
//! exchange), and when it ends (and once between when its response
//! streams): a few short locks a request, off the path where they can be.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{ClientConnection, Context};
use crate::inspector::trace::{SpanId, Trace, TraceParent};
use crate::inspector::{self, Headers, Kind, Open, Seen};

/// A request as it reaches a front port, before it goes on: who sent it,
/// its trace (a span of its own), and whether it is the supervisor's
/// replay, found alike for HTTP/1 and HTTP/2. Its capture begins from here.
#[derive(Debug)]
pub struct Arrival {
    arrived: Instant,
    /// Spent waiting for a ready instance.
    waited: Duration,
    /// The caller and the trace; `None` when the front port captures nothing.
    captured: Option<(Arc<str>, Trace)>,
    replay_of: Option<u64>,
    /// A developer's route: the request's own, else inferred as its trace
    /// is (see `Store::enter_routed`).
    route: Option<Arc<str>>,
}

impl Arrival {
    /// A request that arrived at `arrived` on `connection` and carried the
    /// trace `given`, the replay header `replay` (its value) and the route
    /// `route` (a developer's). How long it waits for an instance is told
    /// with [`Arrival::waited`].
    pub async fn new(
        context: &Arc<Context>,
        connection: &ClientConnection,
        arrived: Instant,
        (given, replay, route): (Option<TraceParent>, Option<&[u8]>, Option<&str>),
    ) -> Arrival {
        let mut carried = route.map(Arc::from);
        let captured = context.caller(connection).await.map(|caller| {
            let (trace, route) = context.inspector.store.enter_routed(
                context.thread,
                &context.service,
                &caller,
                given,
                (route, !context.routed.is_empty()),
            );
            carried = route;
            (caller, trace)
        });
        Arrival {
            arrived,
            waited: Duration::ZERO,
            captured,
            replay_of: replay.and_then(|value| context.inspector.replay_of(value)),
            route: carried,
        }
    }

    /// The request waited `waited` for a ready instance.
    pub fn waited(&mut self, waited: Duration) {
        self.waited = waited;
    }

    /// The route it goes on with: its own, or its caller's.
    pub fn route(&self) -> Option<&str> {
        self.route.as_deref()
    }

    /// The trace the request goes on with, when it is captured: its
    /// `traceparent` replaces the one it came with.
    pub fn trace(&self) -> Option<Trace> {
        self.captured.as_ref().map(|(_, trace)| *trace)
    }

    /// Begins the capture of the request as forwarded, when there is one.
    pub fn begin(&self, context: &Arc<Context>, request: Request<'_>) -> Option<Capture> {
        let (caller, trace) = self.captured.as_ref()?;
        Some(Capture::begin(context, Arc::clone(caller), request, *trace, self))
    }
}

/// The request as captured.
#[derive(Debug)]
pub struct Request<'a> {
    pub method: &'a str,
    pub target: &'a str,
    pub version: &'static str,
    pub headers: Headers,
}

/// An exchange being captured. Dropped before [`Capture::end`], it is
/// recorded as cut off.
pub struct Capture {
    open: Open,
    /// The front port on the thread that captures.
    context: Arc<Context>,
    span: SpanId,
    replay: bool,
    arrived: Instant,
    /// The response head, until it is in the store.
    response: Option<Response>,
    ended: bool,
}

#[derive(Debug)]
struct Response {
    status: u16,
    headers: Headers,
    service_ms: Option<f64>,
    kind: Kind,
}

impl Capture {
    /// Records the request of an exchange from `caller`.
    fn begin(
        context: &Arc<Context>,
        caller: Arc<str>,
        request: Request<'_>,
        trace: Trace,
        arrival: &Arrival,
    ) -> Capture {
        let mut exchange = inspector::Exchange::begun(Arc::clone(&context.service), caller, Kind::Http);
        // Stamped when the request arrived, not when a wait for a ready
        // instance ended: the wait is shown apart.
        exchange.started_ms = exchange
            .started_ms
            .saturating_sub(arrival.arrived.elapsed().as_millis() as u64);
        exchange.method = request.method.to_owned();
        exchange.path = request.target.to_owned();
        exchange.version = request.version;
        exchange.request_headers = request.headers;
        exchange.wait_ms = millis(arrival.waited);
        exchange.trace_id = Some(trace.header.trace_id);
        exchange.span_id = Some(trace.header.span_id);
        exchange.parent_span_id = trace.parent;
        exchange.trace_inferred = trace.inferred;
        exchange.replay_of = arrival.replay_of;
        Capture {
            open: context.inspector.store.add(context.thread, exchange),
            context: Arc::clone(context),
            span: trace.header.span_id,
            replay: arrival.replay_of.is_some(),
            arrived: arrival.arrived,
            response: None,
            ended: false,
        }
    }

    pub fn open(&self) -> Open {
        self.open
    }

    /// When the request arrived: a body's timing counts from there.
    pub fn arrived(&self) -> Instant {
        self.arrived
    }

    /// Says something of the exchange besides its outcome (where a route
    /// took it).
    pub fn note(&self, note: String) {
        self.context.inspector.store.update(self.open, |e| e.note = Some(note));
    }

    /// The id to tell the client, when the request is a replay.
    pub fn replay_id(&self) -> Option<u64> {
        self.replay.then_some(self.open.id)
    }

    /// Notes the response head, which came `service_time` after the request
    /// was forwarded (`None`: the proxy answered itself).
    pub fn respond(&mut self, status: u16, headers: Headers, service_time: Option<Duration>) {
        self.response = Some(Response {
            status,
            headers,
            service_ms: service_time.map(millis),
            kind: Kind::Http,
        });
    }

    /// The connection now carries another protocol (a WebSocket, say).
    pub fn upgraded(&mut self, protocol: &str) {
        if let Some(response) = &mut self.response {
            response.kind = if protocol.eq_ignore_ascii_case("websocket") {
                Kind::WebSocket
            } else {
                Kind::Tcp
            };
        }
    }

    /// Shows the response head now, before the exchange ends: its body is
    /// still coming.
    pub fn publish(&mut self) {
        if let Some(response) = self.response.take() {
            self.context
                .inspector
                .store
                .update(self.open, |e| write_response(e, response));
        }
    }

    /// Records the end of the exchange: its bodies (`None`: recorded
    /// elsewhere), and what went wrong.
    pub fn end(mut self, request: Option<Seen>, response: Option<Seen>, error: Option<String>) {
        self.finish(request, response, error);
    }

    /// Records the end of an exchange the proxy answered itself (the
    /// service was not ready, or did not answer) with `message`.
    pub fn end_answered(mut self, status: u16, headers: Headers, message: &str) {
        self.respond(status, headers, None);
        let mut seen = Seen::passed(0);
        seen.record(message.as_bytes(), message.len());
        self.finish(None, Some(seen), None);
    }

    /// Records the end of an upgraded connection that carried these bytes.
    pub fn end_stream(mut self, up: u64, down: u64, error: Option<String>) {
        self.finish(Some(Seen::passed(up)), Some(Seen::passed(down)), error);
    }

    fn finish(&mut self, request: Option<Seen>, response: Option<Seen>, error: Option<String>) {
        self.ended = true;
        let total_ms = millis(self.arrived.elapsed());
        let pending = self.response.take();
        let body = |seen: &mut Seen| seen.take_body(self.arrived);
        // Bodies are made ready before the store's lock is taken.
        let request = request.map(|mut seen| (body(&mut seen), seen));
        let response = response.map(|mut seen| (body(&mut seen), seen));
        self.context
            .inspector
            .store
            .finish(self.open, Some((&self.context.service, self.span)), |e| {
                if let Some(response) = pending {
                    write_response(e, response);
                }
                // A stream's bytes are counted, not kept.
                let http = e.kind == Kind::Http;
                if let Some((body, seen)) = request {
                    e.bytes_up = seen.size;
                    if http {
                        e.request_body = body;
                    }
                }
                if let Some((body, seen)) = response {
                    e.bytes_down = seen.size;
                    if http {
                        e.response_body = body;
                    }
                    if let Some(trailers) = &seen.trailers {
                        e.response_trailers = Headers::new(trailers);
                    }
                    // An answer the client stopped reading once it had its
                    // head was answered (as a client that reads a status and
                    // drops the body chooses): a note, no failure. One the
                    // service broke off is a failure.
                    match (seen.finished, seen.abandoned) {
                        (false, true) => {
                            e.note = Some(format!(
                                "the client closed before reading the whole answer ({} of its body's bytes went to it)",
                                seen.size
                            ));
                        }
                        (false, false) if error.is_none() => e.error = Some("the response was cut short".to_owned()),
                        _ => {}
                    }
                }
                if error.is_some() {
                    e.error = error;
                }
                // gRPC's status: in the trailers, or in the headers of a
                // trailers-only answer.
                let grpc = |headers: &Headers| headers.get("grpc-status").and_then(|s| s.parse::<u8>().ok());
                e.grpc_status = grpc(&e.response_trailers).or_else(|| grpc(&e.response_headers));
                e.total_ms = Some(total_ms);
                e.complete = true;
            });
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if !self.ended {
            self.finish(None, None, Some("the connection closed mid-exchange".to_owned()));
        }
    }
}

fn write_response(e: &mut inspector::Exchange, response: Response) {
    e.status = Some(response.status);
    e.response_headers = response.headers;
    e.service_ms = response.service_ms;
    e.kind = response.kind;
}

pub fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
