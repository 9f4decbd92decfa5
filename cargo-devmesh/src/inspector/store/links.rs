//! Traces: each request through a front port is a span, in the trace it
//! was given, else in the trace of the one request its caller is handling
//! (the likely cause of the call), else in a new one. A developer's route
//! (`devmesh::route`) is inferred the same way, for a call that came
//! without one.

use std::sync::Arc;

use super::{Inner, Store, lock};
use crate::inspector::EXTERNAL;
use crate::inspector::trace::{SpanId, Trace, TraceId, TraceParent};

/// A request in flight to a service, so a call that service makes meanwhile
/// can be linked to it.
#[derive(Debug, Clone)]
pub(super) struct InFlight {
    pub(super) trace_id: TraceId,
    pub(super) span_id: SpanId,
    /// The route it carried, or was given as inferred.
    pub(super) route: Option<Arc<str>>,
}

impl Store {
    /// A request from `caller` to `service`, in `shard`,
    /// enters: its trace is the one it was `given`, else the trace of the
    /// caller's own request in flight (the likely cause of this call), else
    /// a new one. It stays in flight until [`Store::finish`] with its span.
    pub fn enter(&self, shard: usize, service: &Arc<str>, caller: &str, given: Option<TraceParent>) -> Trace {
        self.enter_routed(shard, service, caller, given, (None, false)).0
    }

    /// [`Store::enter`] for a request that carried `route` (a developer's):
    /// the route it goes on with too. That is its own; else, when `infer`
    /// (some copy is routed to), the route of the caller's one request in
    /// flight, as its trace is; else none.
    pub fn enter_routed(
        &self,
        shard: usize,
        service: &Arc<str>,
        caller: &str,
        given: Option<TraceParent>,
        (route, infer): (Option<&str>, bool),
    ) -> (Trace, Option<Arc<str>>) {
        let cause = match (&given, route) {
            (None, _) => self.only_request_in_flight_to(caller),
            (Some(_), None) if infer => self.only_request_in_flight_to(caller),
            _ => None,
        };
        let route: Option<Arc<str>> = match route {
            Some(route) => Some(route.into()),
            None if infer => cause.as_ref().and_then(|c| c.route.clone()),
            None => None,
        };
        // Each hop through a front port is a span of its own, and the
        // service sees it as its parent: a service that passes the header
        // on (`devmesh::trace`) links its calls to exactly this request.
        let trace = match given {
            Some(header) => Trace {
                header: TraceParent {
                    span_id: SpanId::random(),
                    ..header
                },
                parent: Some(header.span_id),
                inferred: false,
            },
            None => Trace {
                header: TraceParent::new(
                    cause.as_ref().map_or_else(TraceId::random, |c| c.trace_id),
                    SpanId::random(),
                ),
                parent: cause.as_ref().map(|c| c.span_id),
                inferred: cause.is_some(),
            },
        };
        let in_flight = InFlight {
            trace_id: trace.header.trace_id,
            span_id: trace.header.span_id,
            route: route.clone(),
        };
        let mut inner = self.core.shard(shard);
        match inner.in_flight_to(service) {
            Some(list) => list.push(in_flight),
            None => inner.in_flight.push((Arc::clone(service), vec![in_flight])),
        }
        (trace, route)
    }

    /// The request in flight to `service`, through any shard, when there is
    /// exactly one: a call `service` makes then is surely made for it.
    /// With several, any could be the cause (linking to the newest put 13
    /// calls in one trace and none in another with 8 at once), so the call
    /// is left unlinked rather than put in a trace that may be wrong.
    fn only_request_in_flight_to(&self, service: &str) -> Option<InFlight> {
        // Nothing calls the outside world's requests.
        if service == EXTERNAL {
            return None;
        }
        let mut only = None;
        for shard in &self.core.shards {
            let inner = &mut *lock(&shard.0);
            match inner.in_flight_to(service).map(|list| list.as_slice()) {
                None | Some([]) => {}
                Some([one]) if only.is_none() => only = Some(one.clone()),
                Some(_) => return None,
            }
        }
        only
    }
}

impl Inner {
    pub(super) fn in_flight_to(&mut self, service: &str) -> Option<&mut Vec<InFlight>> {
        self.in_flight
            .iter_mut()
            .find(|(name, _)| **name == *service)
            .map(|(_, list)| list)
    }
}
