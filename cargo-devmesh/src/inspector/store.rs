//! The bounded store of captured exchanges, with live updates.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use devmesh::config::InspectorConfig;
use serde::Serialize;
use tokio::sync::broadcast;

use super::exchange::{Exchange, Summary};
use super::trace::{SpanId, Trace, TraceId, TraceParent};

/// What the store tells live listeners.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Event {
    /// A new exchange, or new facts about one (its response, its end).
    Exchange(Summary),
}

/// A request in flight to a service, so a call that service makes meanwhile
/// can be linked to it.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    trace_id: TraceId,
    span_id: SpanId,
}

/// Captured exchanges, newest last, within a memory cap.
#[derive(Debug)]
pub struct Store {
    pub config: InspectorConfig,
    inner: Mutex<Inner>,
    events: broadcast::Sender<Event>,
}

impl Inner {
    /// Ids rise by one and only the oldest are dropped, so an exchange's
    /// place is its id less the oldest's.
    fn index_of(&self, id: u64) -> Option<usize> {
        let oldest = self.exchanges.front()?.id;
        let index = usize::try_from(id.checked_sub(oldest)?).ok()?;
        (index < self.exchanges.len()).then_some(index)
    }
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    /// Boxed: the ring grows by copying, and an exchange is large.
    exchanges: VecDeque<Box<Exchange>>,
    /// Sum of the exchanges' weights.
    weight: usize,
    in_flight: HashMap<Arc<str>, Vec<InFlight>>,
}

/// Which exchanges a list shows.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub service: Option<String>,
    pub method: Option<String>,
    /// `2` matches 2xx, `404` matches 404.
    pub status: Option<String>,
    /// Text in the path or a body.
    pub text: Option<String>,
    pub trace_id: Option<TraceId>,
    /// Only exchanges with a greater id.
    pub after: Option<u64>,
    pub limit: Option<usize>,
}

impl Filter {
    fn matches(&self, e: &Exchange) -> bool {
        let contains = |haystack: &str, needle: &str| haystack.to_lowercase().contains(&needle.to_lowercase());
        self.service
            .as_ref()
            .is_none_or(|s| *e.service == **s || *e.caller == **s)
            && self.method.as_ref().is_none_or(|m| e.method.eq_ignore_ascii_case(m))
            && self.status.as_ref().is_none_or(|s| {
                e.status
                    .is_some_and(|status| status.to_string().starts_with(s.as_str()))
            })
            && self.trace_id.is_none_or(|t| e.trace_id == Some(t))
            && self.after.is_none_or(|after| e.id > after)
            && self.text.as_ref().is_none_or(|t| {
                contains(&e.path, t)
                    || e.request_body.text.as_deref().is_some_and(|b| contains(b, t))
                    || e.response_body.text.as_deref().is_some_and(|b| contains(b, t))
            })
    }
}

impl Store {
    pub fn new(config: InspectorConfig) -> Store {
        Store {
            config,
            inner: Mutex::default(),
            events: broadcast::channel(1024).0,
        }
    }

    /// Adds an exchange, giving it its id; the oldest go when over the cap.
    pub fn add(&self, mut exchange: Exchange) -> u64 {
        // What can be done without the lock is: proxy threads share it.
        self.mask(&mut exchange);
        let weight = exchange.weight();
        let mut exchange = Box::new(exchange);
        let mut evicted = Vec::new();
        let mut inner = self.lock();
        inner.next_id += 1;
        let id = inner.next_id;
        exchange.id = id;
        self.publish(&exchange);
        inner.weight += weight;
        inner.exchanges.push_back(exchange);
        while inner.weight > self.config.memory && inner.exchanges.len() > 1 {
            let oldest = inner.exchanges.pop_front().expect("more than one");
            inner.weight -= oldest.weight();
            evicted.push(oldest);
        }
        drop(inner);
        drop(evicted);
        id
    }

    /// A request from `caller` to `service` enters: its trace is the one
    /// it `given`, else the trace of the caller's own request in flight
    /// (the likely cause of this call), else a new one. It stays in flight
    /// until [`Store::finish`] with its span.
    pub fn enter(&self, service: &Arc<str>, caller: &str, given: Option<TraceParent>) -> Trace {
        let mut inner = self.lock();
        let trace = match given {
            Some(header) => Trace {
                header,
                parent: None,
                added: false,
            },
            None => {
                let cause = inner.in_flight.get(caller).and_then(|list| list.last()).copied();
                Trace {
                    header: TraceParent::new(cause.map_or_else(TraceId::random, |c| c.trace_id), SpanId::random()),
                    parent: cause.map(|c| c.span_id),
                    added: true,
                }
            }
        };
        let in_flight = InFlight {
            trace_id: trace.header.trace_id,
            span_id: trace.header.span_id,
        };
        match inner.in_flight.get_mut(service) {
            Some(list) => list.push(in_flight),
            None => {
                inner.in_flight.insert(Arc::clone(service), vec![in_flight]);
            }
        }
        trace
    }

    /// Changes exchange `id`, if it is still kept.
    pub fn update(&self, id: u64, change: impl FnOnce(&mut Exchange)) {
        self.change(&mut self.lock(), id, change);
    }

    /// Changes exchange `id` for the last time: its request, `span` to
    /// `service`, is no longer in flight.
    pub fn finish(&self, service: &str, span: SpanId, id: u64, change: impl FnOnce(&mut Exchange)) {
        let mut inner = self.lock();
        if let Some(list) = inner.in_flight.get_mut(service) {
            list.retain(|f| f.span_id != span);
        }
        self.change(&mut inner, id, change);
    }

    fn change(&self, inner: &mut Inner, id: u64, change: impl FnOnce(&mut Exchange)) {
        let Some(index) = inner.index_of(id) else {
            return;
        };
        let exchange = &mut inner.exchanges[index];
        let before = exchange.weight();
        change(exchange);
        self.mask(exchange);
        let after = exchange.weight();
        self.publish(exchange);
        inner.weight = inner.weight + after - before;
    }

    /// Tells live listeners, if there are any (building a summary costs).
    fn publish(&self, exchange: &Exchange) {
        if self.events.receiver_count() > 0 {
            let _ = self.events.send(Event::Exchange(Summary::from(exchange)));
        }
    }

    pub fn get(&self, id: u64) -> Option<Exchange> {
        let inner = self.lock();
        inner.index_of(id).map(|index| (*inner.exchanges[index]).clone())
    }

    /// Exchanges that match, oldest first; with a limit, the newest ones.
    pub fn list(&self, filter: &Filter) -> Vec<Exchange> {
        let inner = self.lock();
        let mut found: Vec<Exchange> = inner
            .exchanges
            .iter()
            .filter(|e| filter.matches(e))
            .map(|e| (**e).clone())
            .collect();
        if let Some(limit) = filter.limit
            && found.len() > limit
        {
            found.drain(..found.len() - limit);
        }
        found
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    fn mask(&self, exchange: &mut Exchange) {
        let masked = &self.config.mask_headers;
        if !masked.is_empty() {
            exchange.request_headers.mask(masked);
            exchange.response_headers.mask(masked);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// An exchange with nothing captured yet.
pub fn blank(service: Arc<str>, caller: Arc<str>, kind: super::Kind) -> Exchange {
    Exchange {
        id: 0,
        service,
        caller,
        kind,
        started_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        method: String::new(),
        path: String::new(),
        version: "",
        request_headers: Default::default(),
        request_body: Default::default(),
        status: None,
        response_headers: Default::default(),
        response_body: Default::default(),
        wait_ms: 0.0,
        service_ms: None,
        total_ms: None,
        trace_id: None,
        span_id: None,
        parent_span_id: None,
        trace_inferred: false,
        replay_of: None,
        error: None,
        bytes_up: 0,
        bytes_down: 0,
        complete: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspector::{Body, Kind};

    fn config(memory: usize) -> InspectorConfig {
        let mut config = InspectorConfig::default();
        config.memory = memory;
        config.mask_headers = vec!["authorization".into()];
        config
    }

    fn exchange(path: &str, body: &str) -> Exchange {
        let mut e = blank("orders".into(), "gateway".into(), Kind::Http);
        let mut headers = hyper::HeaderMap::new();
        headers.insert("authorization", "Bearer secret".parse().unwrap());
        e.method = "POST".into();
        e.path = path.into();
        e.status = Some(201);
        e.request_body = Body::new(body.as_bytes().to_vec(), body.len() as u64, false);
        e.request_headers = crate::inspector::Headers::new(&headers);
        e
    }

    #[test]
    fn filters_by_service_method_status_and_text() {
        let store = Store::new(config(1 << 20));
        store.add(exchange("/orders", r#"{"item":"tea"}"#));
        store.add(exchange("/health", ""));
        let count = |narrow: fn(&mut Filter)| {
            let mut filter = Filter::default();
            narrow(&mut filter);
            store.list(&filter).len()
        };
        assert_eq!(count(|_| ()), 2);
        assert_eq!(count(|f| f.text = Some("TEA".into())), 1);
        assert_eq!(count(|f| f.status = Some("2".into())), 2);
        assert_eq!(count(|f| f.status = Some("404".into())), 0);
        assert_eq!(count(|f| f.method = Some("get".into())), 0);
        assert_eq!(count(|f| f.service = Some("gateway".into())), 2);
        assert_eq!(count(|f| f.after = Some(1)), 1);
    }

    #[test]
    fn keeps_within_the_memory_cap_and_masks() {
        let store = Store::new(config(4096));
        for i in 0..100 {
            store.add(exchange(&format!("/orders/{i}"), &"x".repeat(500)));
        }
        let kept = store.list(&Filter::default());
        assert!(kept.len() < 10, "{}", kept.len());
        assert_eq!(kept.last().unwrap().path, "/orders/99");
        assert_eq!(kept[0].request_headers.get("authorization").as_deref(), Some("***"));
    }
}
