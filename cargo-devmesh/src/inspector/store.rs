//! The bounded store of captured exchanges, with live updates: exchanges
//! in flight as values, finished ones as records in a [`Ring`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use devmesh::config::InspectorConfig;
use serde::Serialize;
use tokio::sync::broadcast;

use super::exchange::{Exchange, Summary};
use super::ring::{self, Ring, Stage};
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

/// Captured exchanges within a memory cap.
///
/// Two locks: `inner` for what changes on every request, held briefly;
/// `ring` for the copy of a full stage into the ring and for reading the
/// ring, which take longer. Whoever needs both takes `ring` first. The copy
/// is made by a thread of the store's own, so no request waits for it.
#[derive(Debug)]
pub struct Store {
    pub config: InspectorConfig,
    shared: Arc<Shared>,
    /// Dropped after `shared`, so that the keeper finds it gone and ends.
    keeper: Option<Keeper>,
    events: broadcast::Sender<Event>,
}

#[derive(Debug)]
struct Shared {
    inner: Mutex<Inner>,
    /// Ended exchanges, within the memory cap.
    ring: Mutex<Ring>,
}

/// The thread that moves full stages into the ring, woken when one fills.
#[derive(Debug)]
struct Keeper(std::thread::Thread);

impl Keeper {
    fn start(shared: Weak<Shared>) -> Option<Keeper> {
        let thread = std::thread::Builder::new()
            .name("devmesh-inspector".into())
            .spawn(move || {
                loop {
                    std::thread::park();
                    match shared.upgrade() {
                        Some(shared) => shared.keep_stage(),
                        None => return,
                    }
                }
            })
            .ok()?;
        Some(Keeper(thread.thread().clone()))
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        self.0.unpark();
    }
}

impl Shared {
    /// Moves the full stage into the ring. Readers hold the ring's lock
    /// from before the trade until after the copy, so they see each
    /// record either staged or in the ring.
    fn keep_stage(&self) {
        let mut ring = lock(&self.ring);
        {
            let mut inner = lock(&self.inner);
            if !inner.stage.is_full() {
                return;
            }
            ring.trade(&mut inner.stage);
        }
        ring.keep_traded();
    }
}

/// The store's state that changes on every request.
#[derive(Debug)]
struct Inner {
    next_id: u64,
    /// Exchanges that have not ended; they change until they do.
    open: HashMap<u64, Box<Exchange>>,
    /// Ended exchanges on their way into the ring.
    stage: Stage,
    /// Where a record is written before it is staged.
    record: Vec<u8>,
    /// Requests in flight to each service, newest last.
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
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                next_id: 0,
                open: HashMap::new(),
                stage: Stage::new(config.memory),
                record: Vec::with_capacity(4096),
                in_flight: HashMap::new(),
            }),
            ring: Mutex::new(Ring::new(config.memory)),
        });
        Store {
            keeper: Keeper::start(Arc::downgrade(&shared)),
            shared,
            config,
            events: broadcast::channel(1024).0,
        }
    }

    /// Adds an exchange that has begun, giving it its id; it changes by
    /// [`Store::update`] until [`Store::finish`].
    pub fn add(&self, mut exchange: Exchange) -> u64 {
        self.mask(&mut exchange);
        let mut exchange = Box::new(exchange);
        let listening = self.listening();
        let mut inner = self.lock();
        inner.next_id += 1;
        let id = inner.next_id;
        exchange.id = id;
        if listening {
            self.publish(&exchange);
        }
        inner.open.insert(id, exchange);
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

    /// Changes exchange `id`, if it has not ended.
    pub fn update(&self, id: u64, change: impl FnOnce(&mut Exchange)) {
        let listening = self.listening();
        let mut inner = self.lock();
        if let Some(exchange) = inner.open.get_mut(&id) {
            change(exchange);
            self.mask(exchange);
            if listening {
                self.publish(exchange);
            }
        }
    }

    /// Changes exchange `id` for the last time and keeps it in the ring; the
    /// request it was, `span` to a service, is no longer in flight.
    pub fn finish(&self, id: u64, span: Option<(&str, SpanId)>, change: impl FnOnce(&mut Exchange)) {
        let listening = self.listening();
        let mut inner = self.lock();
        if let Some((service, span)) = span
            && let Some(list) = inner.in_flight.get_mut(service)
        {
            list.retain(|f| f.span_id != span);
        }
        let Some(mut exchange) = inner.open.remove(&id) else {
            return;
        };
        change(&mut exchange);
        self.mask(&mut exchange);
        if listening {
            self.publish(&exchange);
        }
        let Inner { stage, record, .. } = &mut *inner;
        record.clear();
        ring::encode(&exchange, record);
        let (full, overfull) = (stage.push(id, record), stage.is_overfull());
        drop(inner);
        drop(exchange);
        match &self.keeper {
            Some(keeper) if full && !overfull => keeper.0.unpark(),
            _ if full => self.shared.keep_stage(),
            _ => {}
        }
    }

    /// Whether anyone listens for live events (building one costs).
    fn listening(&self) -> bool {
        self.events.receiver_count() > 0
    }

    fn publish(&self, exchange: &Exchange) {
        let _ = self.events.send(Event::Exchange(exchange.summary.clone()));
    }

    pub fn get(&self, id: u64) -> Option<Exchange> {
        let ring = lock(&self.shared.ring);
        let (stage, open) = self.snapshot(|e| e.id == id);
        if let Some(open) = open.into_iter().next() {
            return Some(open);
        }
        ring.iter()
            .chain(stage.iter())
            .rev()
            .find(|(kept, _)| *kept == id)
            .map(|(_, record)| ring::decode(record))
    }

    /// Exchanges that match, oldest first; with a limit, the newest ones.
    pub fn list(&self, filter: &Filter) -> Vec<Exchange> {
        let limit = filter.limit.unwrap_or(usize::MAX);
        let ring = lock(&self.shared.ring);
        let (stage, mut found) = self.snapshot(|e| filter.matches(e));
        found.extend(
            ring.iter()
                .chain(stage.iter())
                .rev()
                .map(|(_, record)| ring::decode(record))
                .filter(|e| filter.matches(e))
                .take(limit),
        );
        drop(ring);
        found.sort_unstable_by_key(|e| e.id);
        if found.len() > limit {
            found.drain(..found.len() - limit);
        }
        found
    }

    /// The summaries of every exchange kept, oldest first: what the call map
    /// needs, read without the headers and bodies.
    pub fn summaries(&self) -> Vec<Summary> {
        let ring = lock(&self.shared.ring);
        let (stage, open) = self.snapshot(|_| true);
        let mut found: Vec<Summary> = open.into_iter().map(|e| e.summary).collect();
        found.extend(
            ring.iter()
                .chain(stage.iter())
                .map(|(_, record)| ring::decode_summary(record)),
        );
        drop(ring);
        found.sort_unstable_by_key(|s| s.id);
        found
    }

    /// A copy of the stage and the open exchanges that match, taken under
    /// the lock every request takes and then let go: a long search holds
    /// only the ring's lock, which no request waits for.
    fn snapshot(&self, matches: impl Fn(&Exchange) -> bool) -> (Stage, Vec<Exchange>) {
        let inner = self.lock();
        let open = inner
            .open
            .values()
            .filter(|e| matches(e))
            .map(|e| (**e).clone())
            .collect();
        (inner.stage.clone(), open)
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
        lock(&self.shared.inner)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// An exchange with nothing captured yet.
pub fn blank(service: Arc<str>, caller: Arc<str>, kind: super::Kind) -> Exchange {
    Exchange {
        summary: Summary {
            id: 0,
            service,
            caller,
            kind,
            started_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            method: String::new(),
            path: String::new(),
            status: None,
            wait_ms: 0.0,
            service_ms: None,
            total_ms: None,
            trace_id: None,
            replay_of: None,
            error: None,
            bytes_up: 0,
            bytes_down: 0,
            complete: false,
        },
        version: "",
        request_headers: Default::default(),
        request_body: Default::default(),
        response_headers: Default::default(),
        response_body: Default::default(),
        span_id: None,
        parent_span_id: None,
        trace_inferred: false,
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
            let id = store.add(exchange(&format!("/orders/{i}"), &"x".repeat(500)));
            store.finish(id, None, |e| e.complete = true);
        }
        let kept = store.list(&Filter::default());
        assert!(kept.len() < 10, "{}", kept.len());
        assert_eq!(kept.last().unwrap().path, "/orders/99");
        assert_eq!(kept[0].request_headers.get("authorization").as_deref(), Some("***"));
    }
}
