//! The bounded store of captured exchanges, with live updates: exchanges
//! in flight as values, finished ones as records in a [`Ring`].

use std::cmp::Reverse;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, TryLockError, Weak};
use std::time::Instant;

use devmesh::config::InspectorConfig;
use serde::Serialize;
use tokio::sync::broadcast;

use super::EXTERNAL;
use super::Masker;
use super::exchange::{Exchange, Summary};
use super::ring::{self, Call, Ring, Stage};
use super::trace::{SpanId, Trace, TraceId, TraceParent};

/// What the store tells live listeners, a tick at a time.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Event {
    /// A new exchange, or new facts about one (its response, its end).
    Exchange(Box<Summary>),
    /// More happened in a tick than listeners are told of: what they show
    /// is behind, and should be asked for again.
    Lagged,
}

/// How often live listeners are told what changed. Telling them of each
/// change as it happened woke a listener for every one and, at tens of
/// thousands of requests a second, flooded the page.
const TICK: std::time::Duration = std::time::Duration::from_millis(50);

/// Changes a shard tells listeners of in a tick at most; past that they
/// hear they lagged. The channel holds a tick's worth.
const NEWS: usize = 256;

/// A request in flight to a service, so a call that service makes meanwhile
/// can be linked to it.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    trace_id: TraceId,
    span_id: SpanId,
}

/// An exchange that has begun: its id, and where it is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Open {
    pub id: u64,
    shard: usize,
    slot: usize,
}

/// Captured exchanges within a memory cap.
///
/// Each thread that captures (a proxy thread) names a shard of its own,
/// which holds the exchanges open through it, the requests in flight
/// through it and a stage of ended ones: threads neither wait for each
/// other nor pass cache lines back and forth on the request path, where
/// all they share is the id counter. Behind the stages is the ring, with a
/// lock of its own for the copy of a full stage and for reading, which take
/// longer; whoever needs both takes the ring's first. The copy is made by
/// a thread of the store's own, so no request waits for it.
#[derive(Debug)]
pub struct Store {
    pub config: InspectorConfig,
    /// What is shown of secret headers; the store keeps them whole.
    pub masker: Masker,
    shared: Arc<Shared>,
    /// Dropped after `shared`, so that the keeper finds it gone and ends.
    keeper: Keeper,
}

#[derive(Debug)]
struct Shared {
    next_id: AtomicU64,
    shards: Box<[Shard]>,
    /// Ended exchanges, within the memory cap.
    ring: Mutex<Ring>,
    events: broadcast::Sender<Event>,
    /// Live listeners, counted here: asking the channel takes its lock.
    listeners: Arc<AtomicUsize>,
}

/// A shard's state, on cache lines of its own.
#[derive(Debug)]
#[repr(align(128))]
struct Shard(Mutex<Inner>);

/// The store's own thread: it moves full stages into the ring, woken when
/// one fills, and tells live listeners what changed, a tick at a time
/// while there are any.
#[derive(Debug)]
struct Keeper(std::thread::Thread);

impl Keeper {
    fn start(shared: Weak<Shared>) -> std::io::Result<Keeper> {
        let thread = std::thread::Builder::new()
            .name("devmesh-inspector".into())
            .spawn(move || {
                let (mut ticking, mut news, mut told) = (false, Vec::new(), Instant::now());
                loop {
                    if ticking {
                        std::thread::park_timeout(TICK.saturating_sub(told.elapsed()));
                    } else {
                        std::thread::park();
                    }
                    let Some(shared) = shared.upgrade() else { return };
                    shared.keep_stages();
                    // Full stages wake the keeper far more often than it ticks.
                    if !ticking || told.elapsed() >= TICK {
                        shared.tell_listeners(&mut news);
                        told = Instant::now();
                    }
                    ticking = shared.listening();
                }
            })?;
        Ok(Keeper(thread.thread().clone()))
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        self.0.unpark();
    }
}

impl Shared {
    /// Moves full stages into the ring. Readers hold the ring's lock from
    /// before a trade until after its copy, so they see each record either
    /// staged or in the ring.
    fn keep_stages(&self) {
        self.keep_stages_in(&mut lock(&self.ring));
    }

    /// Moves full stages into the ring unless a reader holds it (a search
    /// of a full ring takes tens of milliseconds); says whether it did.
    fn try_keep_stages(&self) -> bool {
        match self.ring.try_lock() {
            Ok(mut ring) => self.keep_stages_in(&mut ring),
            Err(TryLockError::Poisoned(poisoned)) => self.keep_stages_in(&mut poisoned.into_inner()),
            Err(TryLockError::WouldBlock) => return false,
        }
        true
    }

    fn keep_stages_in(&self, ring: &mut Ring) {
        for shard in &self.shards {
            {
                let mut inner = lock(&shard.0);
                if !inner.stage.is_full() {
                    continue;
                }
                ring.trade(&mut inner.stage);
            }
            ring.keep_traded();
        }
    }

    fn shard(&self, shard: usize) -> std::sync::MutexGuard<'_, Inner> {
        lock(&self.shards[shard % self.shards.len()].0)
    }

    /// Whether anyone listens for live events (gathering them costs).
    fn listening(&self) -> bool {
        self.listeners.load(Ordering::Relaxed) > 0
    }

    /// Tells listeners what changed since the last tick (`news` is where
    /// a shard's changes are taken to, kept from tick to tick).
    fn tell_listeners(&self, news: &mut Vec<Summary>) {
        let mut lagged = false;
        for shard in &self.shards {
            {
                let mut inner = lock(&shard.0);
                std::mem::swap(&mut inner.news.changed, news);
                lagged |= std::mem::take(&mut inner.news.lagged);
            }
            for summary in news.drain(..) {
                let _ = self.events.send(Event::Exchange(Box::new(summary)));
            }
        }
        if lagged {
            let _ = self.events.send(Event::Lagged);
        }
    }
}

/// The state of a shard, which changes on every request through it.
#[derive(Debug)]
struct Inner {
    /// Exchanges that have not ended; they change until they do.
    open: OpenExchanges,
    /// Ended exchanges on their way into the ring.
    stage: Stage,
    /// Requests in flight to each service, newest last. Services are few:
    /// a list is found by comparing names, faster than hashing one.
    in_flight: Vec<(Arc<str>, Vec<InFlight>)>,
    /// Changes since the last tick, for live listeners.
    news: News,
}

#[derive(Debug, Default)]
struct News {
    changed: Vec<Summary>,
    /// Whether more changed than is told in a tick.
    lagged: bool,
}

impl News {
    /// Notes a change to `exchange`.
    fn note(&mut self, exchange: &Exchange) {
        if self.changed.len() < NEWS {
            self.changed.push(exchange.summary.clone());
        } else {
            self.lagged = true;
        }
    }
}

impl Inner {
    fn in_flight_to(&mut self, service: &str) -> Option<&mut Vec<InFlight>> {
        self.in_flight
            .iter_mut()
            .find(|(name, _)| **name == *service)
            .map(|(_, list)| list)
    }
}

/// Exchanges that have not ended, in slots used again as they end: no
/// allocation or hashing per request.
#[derive(Debug, Default)]
struct OpenExchanges {
    slots: Vec<Option<Exchange>>,
    free: Vec<usize>,
}

impl OpenExchanges {
    /// Keeps `exchange`; returns its slot.
    fn insert(&mut self, exchange: Exchange) -> usize {
        match self.free.pop() {
            Some(slot) => {
                self.slots[slot] = Some(exchange);
                slot
            }
            None => {
                self.slots.push(Some(exchange));
                self.slots.len() - 1
            }
        }
    }

    fn get_mut(&mut self, open: Open) -> Option<&mut Exchange> {
        self.slots.get_mut(open.slot)?.as_mut().filter(|e| e.id == open.id)
    }

    fn remove(&mut self, open: Open) -> Option<Exchange> {
        self.get_mut(open)?;
        self.free.push(open.slot);
        self.slots[open.slot].take()
    }

    fn iter(&self) -> impl Iterator<Item = &Exchange> {
        self.slots.iter().flatten()
    }
}

/// Live events from the store, for as long as this is kept.
#[derive(Debug)]
pub struct Subscription {
    receiver: broadcast::Receiver<Event>,
    listeners: Arc<AtomicUsize>,
}

impl Subscription {
    pub async fn recv(&mut self) -> Result<Event, broadcast::error::RecvError> {
        self.receiver.recv().await
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.listeners.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Which exchanges a list shows.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub service: Option<String>,
    pub method: Option<String>,
    /// `2` matches 2xx, `404` matches 404, `failed` what failed (an error,
    /// a 5xx, a gRPC status but OK).
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
            && self.status.as_ref().is_none_or(|s| match s.as_str() {
                "failed" => super::ring::Call::of(&e.summary).failed(),
                s => e.status.is_some_and(|status| status.to_string().starts_with(s)),
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
    /// A store for `shards` capturing threads (at least one); fails if its
    /// own thread cannot start.
    pub fn new(config: InspectorConfig, shards: usize) -> std::io::Result<Store> {
        let count = shards.max(1);
        let shards = (0..count)
            .map(|_| {
                Shard(Mutex::new(Inner {
                    open: OpenExchanges::default(),
                    stage: Stage::new(config.memory),
                    in_flight: Vec::new(),
                    news: News::default(),
                }))
            })
            .collect();
        let shared = Arc::new(Shared {
            next_id: AtomicU64::new(1),
            shards,
            ring: Mutex::new(Ring::new(config.memory)),
            events: broadcast::channel(NEWS * count).0,
            listeners: Arc::new(AtomicUsize::new(0)),
        });
        Ok(Store {
            keeper: Keeper::start(Arc::downgrade(&shared))?,
            shared,
            masker: Masker::new(&config.mask_headers),
            config,
        })
    }

    /// Adds an exchange that has begun in `shard`, giving it its id; it
    /// changes by [`Store::update`] until [`Store::finish`].
    pub fn add(&self, shard: usize, mut exchange: Exchange) -> Open {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        exchange.id = id;
        let listening = self.shared.listening();
        let mut inner = self.shared.shard(shard);
        if listening {
            inner.news.note(&exchange);
        }
        let slot = inner.open.insert(exchange);
        Open { id, shard, slot }
    }

    /// A request from `caller` to `service`, in `shard`,
    /// enters: its trace is the one it was `given`, else the trace of the
    /// caller's own request in flight (the likely cause of this call), else
    /// a new one. It stays in flight until [`Store::finish`] with its span.
    pub fn enter(&self, shard: usize, service: &Arc<str>, caller: &str, given: Option<TraceParent>) -> Trace {
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
            None => {
                let cause = self.only_request_in_flight_to(caller);
                Trace {
                    header: TraceParent::new(cause.map_or_else(TraceId::random, |c| c.trace_id), SpanId::random()),
                    parent: cause.map(|c| c.span_id),
                    inferred: cause.is_some(),
                }
            }
        };
        let in_flight = InFlight {
            trace_id: trace.header.trace_id,
            span_id: trace.header.span_id,
        };
        let mut inner = self.shared.shard(shard);
        match inner.in_flight_to(service) {
            Some(list) => list.push(in_flight),
            None => inner.in_flight.push((Arc::clone(service), vec![in_flight])),
        }
        trace
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
        for shard in &self.shared.shards {
            let inner = &mut *lock(&shard.0);
            match inner.in_flight_to(service).map(|list| list.as_slice()) {
                None | Some([]) => {}
                Some([one]) if only.is_none() => only = Some(*one),
                Some(_) => return None,
            }
        }
        only
    }

    /// Changes exchange `open`, if it has not ended.
    pub fn update(&self, open: Open, change: impl FnOnce(&mut Exchange)) {
        let listening = self.shared.listening();
        let mut inner = self.shared.shard(open.shard);
        let Inner {
            open: exchanges, news, ..
        } = &mut *inner;
        if let Some(exchange) = exchanges.get_mut(open) {
            change(exchange);
            if listening {
                news.note(exchange);
            }
        }
    }

    /// Changes exchange `open` for the last time and keeps it in the ring;
    /// the request it was, `span` to a service, is no longer in flight.
    pub fn finish(&self, open: Open, span: Option<(&str, SpanId)>, change: impl FnOnce(&mut Exchange)) {
        let listening = self.shared.listening();
        let mut inner = self.shared.shard(open.shard);
        if let Some((service, span)) = span
            && let Some(list) = inner.in_flight_to(service)
        {
            list.retain(|f| f.span_id != span);
        }
        let Some(mut exchange) = inner.open.remove(open) else {
            return;
        };
        change(&mut exchange);
        if listening {
            inner.news.note(&exchange);
        }
        let stage = &mut inner.stage;
        let (full, overfull) = (
            stage.push(open.id, |out| ring::encode(&exchange, out)),
            stage.is_overfull(),
        );
        drop(inner);
        drop(exchange);
        if !full {
            return;
        }
        // The keeper copies full stages. One it has fallen far behind on is
        // copied here to keep the memory cap, but a request never waits for
        // a search: while one holds the ring, the stage grows.
        if !overfull || !self.shared.try_keep_stages() {
            self.keeper.0.unpark();
        }
    }

    /// Exchange `id`, its secret headers masked.
    pub fn get(&self, id: u64) -> Option<Exchange> {
        self.get_unmasked(id).map(|e| self.masker.exchange(e))
    }

    /// Exchange `id` as it was, secrets included: for a replay only.
    pub fn get_unmasked(&self, id: u64) -> Option<Exchange> {
        let ring = lock(&self.shared.ring);
        let (stages, open) = self.snapshot(|e| e.id == id);
        if let Some(open) = open.into_iter().next() {
            return Some(open);
        }
        ring.iter()
            .chain(stages.iter().flat_map(Stage::iter))
            .find(|(kept, _)| *kept == id)
            .map(|(_, record)| ring::decode(record))
    }

    /// Exchanges that match, oldest first. With a limit, the newest ones,
    /// or, after an id, the oldest after it: a follower misses none.
    pub fn list(&self, filter: &Filter) -> Vec<Exchange> {
        let limit = filter.limit.unwrap_or(usize::MAX);
        let ring = lock(&self.shared.ring);
        let (stages, mut found) = self.snapshot(|e| filter.matches(e));
        // Stages from different shards take turns in the ring, so its order
        // is not quite the ids': records are taken in the order of theirs.
        let mut records: Vec<(u64, &[u8])> = ring
            .iter()
            .chain(stages.iter().flat_map(Stage::iter))
            .filter(|(id, _)| filter.after.is_none_or(|after| *id > after))
            .collect();
        match filter.after {
            Some(_) => records.sort_unstable_by_key(|(id, _)| *id),
            None => records.sort_unstable_by_key(|(id, _)| Reverse(*id)),
        }
        found.extend(
            records
                .into_iter()
                .map(|(_, record)| ring::decode(record))
                .filter(|e| filter.matches(e))
                .take(limit),
        );
        drop(ring);
        found.sort_unstable_by_key(|e| e.id);
        if found.len() > limit {
            match filter.after {
                Some(_) => found.truncate(limit),
                None => drop(found.drain(..found.len() - limit)),
            }
        }
        found.into_iter().map(|e| self.masker.exchange(e)).collect()
    }

    /// Up to `size` of the exchanges kept after id `after`, oldest first,
    /// that match `filter` (masked), and the id to go on after, `None` once
    /// none is left: an export walks the store a page at a time, holding
    /// the ring for one page only and never more than a page in memory.
    pub fn page(&self, filter: &Filter, after: u64, size: usize) -> Page {
        let size = size.max(1);
        let ring = lock(&self.shared.ring);
        let (stages, mut found) = self.snapshot(|e| e.id > after && filter.matches(e));
        let mut records: Vec<(u64, &[u8])> = ring
            .iter()
            .chain(stages.iter().flat_map(Stage::iter))
            .filter(|(id, _)| *id > after)
            .collect();
        let more = records.len() > size;
        if more {
            records.select_nth_unstable_by_key(size - 1, |(id, _)| *id);
            records.truncate(size);
        }
        let next = more.then(|| records.iter().map(|(id, _)| *id).max()).flatten();
        found.retain(|e| next.is_none_or(|next| e.id <= next));
        found.extend(
            records
                .into_iter()
                .map(|(_, record)| ring::decode(record))
                .filter(|e| filter.matches(e)),
        );
        drop(ring);
        found.sort_unstable_by_key(|e| e.id);
        found.dedup_by_key(|e| e.id);
        Page {
            exchanges: found.into_iter().map(|e| self.masker.exchange(e)).collect(),
            next,
        }
    }

    /// Shows `visit` the call of every exchange kept, read in place: what
    /// the call map needs, without copying a full ring's worth of
    /// summaries (which took 70 ms for 250,000 exchanges).
    pub fn each_call(&self, mut visit: impl FnMut(Call<'_>)) {
        let ring = lock(&self.shared.ring);
        let (stages, open) = self.snapshot(|_| true);
        for exchange in &open {
            visit(Call::of(&exchange.summary));
        }
        for (_, record) in ring.iter().chain(stages.iter().flat_map(Stage::iter)) {
            visit(ring::decode_call(record));
        }
    }

    /// Copies of the stages and of the open exchanges that match, taken
    /// under each shard's lock in turn: a long search then holds only the
    /// ring's lock, which no request waits for.
    fn snapshot(&self, matches: impl Fn(&Exchange) -> bool) -> (Vec<Stage>, Vec<Exchange>) {
        let mut stages = Vec::with_capacity(self.shared.shards.len());
        let mut open = Vec::new();
        for shard in &self.shared.shards {
            let inner = lock(&shard.0);
            open.extend(inner.open.iter().filter(|e| matches(e)).cloned());
            stages.push(inner.stage.clone());
        }
        (stages, open)
    }

    pub fn subscribe(&self) -> Subscription {
        self.shared.listeners.fetch_add(1, Ordering::Relaxed);
        // The keeper starts ticking.
        self.keeper.0.unpark();
        Subscription {
            receiver: self.shared.events.subscribe(),
            listeners: Arc::clone(&self.shared.listeners),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// A page of exchanges, and where the next begins.
#[derive(Debug)]
pub struct Page {
    pub exchanges: Vec<Exchange>,
    pub next: Option<u64>,
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
            grpc_status: None,
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
        response_trailers: Default::default(),
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
        let store = Store::new(config(1 << 20), 2).unwrap();
        store.add(0, exchange("/orders", r#"{"item":"tea"}"#));
        store.add(1, exchange("/health", ""));
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
        let store = Store::new(config(4096), 1).unwrap();
        for i in 0..100 {
            let open = store.add(0, exchange(&format!("/orders/{i}"), &"x".repeat(500)));
            store.finish(open, None, |e| e.complete = true);
        }
        let kept = store.list(&Filter::default());
        assert!(kept.len() < 10, "{}", kept.len());
        assert_eq!(kept.last().unwrap().path, "/orders/99");
        let shown = kept[0].request_headers.get("authorization").unwrap();
        assert!(
            shown.len() == "Bearer secret".len() && shown.ends_with("****"),
            "{shown}"
        );
        let whole = store.get_unmasked(kept.last().unwrap().id).unwrap();
        assert_eq!(
            whole.request_headers.get("authorization").as_deref(),
            Some("Bearer secret")
        );
    }

    #[test]
    fn pages_walk_every_match_once_in_order_whichever_shard_kept_it() {
        let store = Store::new(config(1 << 20), 2).unwrap();
        for i in 0..300 {
            let mut e = exchange(&format!("/orders/{i}"), "");
            if i % 3 == 0 {
                e.service = "payments".into();
            }
            let open = store.add(i % 2, e);
            store.finish(open, None, |_| ());
        }
        let filter = Filter {
            service: Some("orders".into()),
            ..Filter::default()
        };
        let (mut seen, mut cursor, mut pages) = (Vec::new(), Some(0), 0);
        while let Some(after) = cursor {
            let page = store.page(&filter, after, 16);
            assert!(page.exchanges.len() <= 16);
            seen.extend(page.exchanges.iter().map(|e| e.path.clone()));
            cursor = page.next;
            pages += 1;
        }
        let expected: Vec<String> = (0..300)
            .filter(|i| i % 3 != 0)
            .map(|i| format!("/orders/{i}"))
            .collect();
        assert_eq!(seen, expected);
        assert!(pages >= 300 / 16, "{pages} pages");
    }

    #[test]
    fn the_newest_are_listed_whichever_shard_kept_them() {
        let store = Store::new(config(1 << 20), 2).unwrap();
        // Shard 0 fills its stage, which goes into the ring; shard 1's
        // exchanges, older and newer, wait in its stage.
        let early = store.add(1, exchange("/early", ""));
        store.finish(early, None, |_| ());
        for i in 0..400 {
            let open = store.add(0, exchange(&format!("/orders/{i}"), &"x".repeat(400)));
            store.finish(open, None, |_| ());
        }
        let late = store.add(1, exchange("/late", ""));
        store.finish(late, None, |_| ());
        let newest = store.list(&Filter {
            limit: Some(3),
            ..Filter::default()
        });
        let paths: Vec<&str> = newest.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["/orders/398", "/orders/399", "/late"]);
        assert_eq!(store.list(&Filter::default()).len(), 402);
        assert_eq!(store.get(early.id).map(|e| e.path.clone()).as_deref(), Some("/early"));
    }

    #[test]
    fn a_call_is_linked_to_the_request_its_caller_is_handling_through_another_shard() {
        let store = Store::new(config(1 << 20), 2).unwrap();
        let (gateway, orders): (Arc<str>, Arc<str>) = ("gateway".into(), "orders".into());
        let outer = store.enter(0, &gateway, EXTERNAL, None);
        assert_eq!(outer.parent, None, "the outside world handles no request");
        let inner = store.enter(1, &orders, "gateway", None);
        assert_eq!(inner.header.trace_id, outer.header.trace_id);
        assert_eq!(inner.parent, Some(outer.header.span_id));
        // Once the gateway's request is over, a call starts a trace of its own.
        let open = store.add(0, exchange("/", ""));
        store.finish(open, Some(("gateway", outer.header.span_id)), |_| ());
        let later = store.enter(1, &orders, "gateway", None);
        assert_ne!(later.header.trace_id, outer.header.trace_id);
        assert_eq!(later.parent, None);
    }

    #[test]
    fn a_call_is_left_unlinked_when_its_caller_handles_several_requests() {
        let store = Store::new(config(1 << 20), 2).unwrap();
        let (gateway, orders): (Arc<str>, Arc<str>) = ("gateway".into(), "orders".into());
        let first = store.enter(0, &gateway, EXTERNAL, None);
        let second = store.enter(1, &gateway, EXTERNAL, None);
        let call = store.enter(0, &orders, "gateway", None);
        assert_eq!((call.parent, call.inferred), (None, false));
        assert!(![first.header.trace_id, second.header.trace_id].contains(&call.header.trace_id));
        // Said by the caller, it is exact however many are in flight; the
        // service sees this hop's own span as its parent.
        let told = TraceParent::new(second.header.trace_id, second.header.span_id);
        let call = store.enter(1, &orders, "gateway", Some(told));
        assert_eq!(call.header.trace_id, second.header.trace_id);
        assert_eq!((call.parent, call.inferred), (Some(second.header.span_id), false));
        assert_ne!(call.header.span_id, second.header.span_id);
    }

    #[test]
    fn a_request_does_not_wait_for_a_search_of_the_ring() {
        let store = Arc::new(Store::new(config(1 << 20), 1).unwrap());
        // A search holds the ring for as long as a thousand exchanges end,
        // enough to fill the stage many times over.
        let search = lock(&store.shared.ring);
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn({
            let store = Arc::clone(&store);
            move || {
                for i in 0..1000 {
                    let open = store.add(0, exchange(&format!("/orders/{i}"), &"x".repeat(400)));
                    store.finish(open, None, |_| ());
                }
                let _ = done.send(());
            }
        });
        let waited = finished.recv_timeout(std::time::Duration::from_secs(10));
        drop(search);
        assert!(waited.is_ok(), "requests waited for the search");
        assert_eq!(store.list(&Filter::default()).len(), 1000);
    }

    #[tokio::test]
    async fn listeners_hear_of_changes_a_tick_at_a_time_and_when_they_lagged() {
        let store = Store::new(config(1 << 20), 1).unwrap();
        let mut events = store.subscribe();
        let next = async |events: &mut Subscription| {
            tokio::time::timeout(std::time::Duration::from_secs(5), events.recv())
                .await
                .expect("news in time")
        };
        let open = store.add(0, exchange("/one", ""));
        store.finish(open, None, |e| e.complete = true);
        let (began, ended) = (next(&mut events).await, next(&mut events).await);
        assert!(matches!(began, Ok(Event::Exchange(s)) if s.id == open.id && !s.complete));
        assert!(matches!(ended, Ok(Event::Exchange(s)) if s.id == open.id && s.complete));
    }

    #[test]
    fn a_tick_tells_of_so_many_changes_then_that_listeners_lagged() {
        let mut news = News::default();
        for i in 0..NEWS {
            news.note(&exchange(&format!("/orders/{i}"), ""));
        }
        assert!(!news.lagged);
        news.note(&exchange("/one-too-many", ""));
        assert!(news.lagged);
        assert_eq!(news.changed.len(), NEWS);
    }

    #[test]
    fn after_an_id_the_oldest_come_first_so_a_follower_misses_none() {
        let store = Store::new(config(1 << 20), 2).unwrap();
        for i in 0..600 {
            let open = store.add(i % 2, exchange(&format!("/orders/{i}"), ""));
            store.finish(open, None, |_| ());
        }
        let page = |after| {
            let listed = store.list(&Filter {
                after: Some(after),
                limit: Some(500),
                ..Filter::default()
            });
            listed.iter().map(|e| e.id).collect::<Vec<_>>()
        };
        assert_eq!(page(0), (1..=500).collect::<Vec<_>>());
        assert_eq!(page(500), (501..=600).collect::<Vec<_>>());
    }
}
