//! The bounded store of captured exchanges, with live updates: exchanges
//! in flight as values, finished ones as records in a [`Ring`].
//!
//! - here: the shards, the ring behind them, and reading;
//! - `keeper`: the store's own thread, which moves full stages into the ring;
//! - `live`: what live listeners are told, a tick at a time;
//! - `links`: traces, linked from the requests in flight;
//! - `filter`: which exchanges a list shows (secrets are masked as read).

mod filter;
mod keeper;
mod links;
mod live;
#[cfg(test)]
mod tests;

pub use filter::Filter;
pub use live::{Event, Subscription};

use keeper::Keeper;
use links::InFlight;
use live::Changes;

use std::cmp::Reverse;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use devmesh::config::InspectorConfig;
use tokio::sync::broadcast;

use super::Masker;
use super::exchange::Exchange;
use super::ring::{self, Call, Ring, Stage};
use super::trace::SpanId;

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
    core: Arc<Core>,
    /// Dropped after `core`, so that the keeper finds it gone and ends.
    keeper: Keeper,
}

#[derive(Debug)]
struct Core {
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

impl Core {
    fn shard(&self, shard: usize) -> std::sync::MutexGuard<'_, Inner> {
        lock(&self.shards[shard % self.shards.len()].0)
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
    changes: Changes,
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
                    changes: Changes::default(),
                }))
            })
            .collect();
        let core = Arc::new(Core {
            next_id: AtomicU64::new(1),
            shards,
            ring: Mutex::new(Ring::new(config.memory)),
            events: broadcast::channel(live::MAX_CHANGES * count).0,
            listeners: Arc::new(AtomicUsize::new(0)),
        });
        Ok(Store {
            keeper: Keeper::start(Arc::downgrade(&core))?,
            core,
            masker: Masker::new(&config.mask_headers),
            config,
        })
    }

    /// Adds an exchange that has begun in `shard`, giving it its id; it
    /// changes by [`Store::update`] until [`Store::finish`].
    pub fn add(&self, shard: usize, mut exchange: Exchange) -> Open {
        let id = self.core.next_id.fetch_add(1, Ordering::Relaxed);
        exchange.id = id;
        let listening = self.core.listening();
        let mut inner = self.core.shard(shard);
        if listening {
            inner.changes.note(&exchange);
        }
        let slot = inner.open.insert(exchange);
        Open { id, shard, slot }
    }

    /// Changes exchange `open`, if it has not ended.
    pub fn update(&self, open: Open, change: impl FnOnce(&mut Exchange)) {
        let listening = self.core.listening();
        let mut inner = self.core.shard(open.shard);
        let Inner {
            open: exchanges,
            changes,
            ..
        } = &mut *inner;
        if let Some(exchange) = exchanges.get_mut(open) {
            change(exchange);
            if listening {
                changes.note(exchange);
            }
        }
    }

    /// Changes exchange `open` for the last time and keeps it in the ring;
    /// the request it was, `span` to a service, is no longer in flight.
    pub fn finish(&self, open: Open, span: Option<(&str, SpanId)>, change: impl FnOnce(&mut Exchange)) {
        let listening = self.core.listening();
        let mut inner = self.core.shard(open.shard);
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
            inner.changes.note(&exchange);
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
        if !overfull || !self.core.try_keep_stages() {
            self.keeper.0.unpark();
        }
    }

    /// Exchange `id`, its secret headers masked.
    pub fn get(&self, id: u64) -> Option<Exchange> {
        self.get_unmasked(id).map(|e| self.masker.exchange(e))
    }

    /// Exchange `id` as it was, secrets included: for a replay only.
    pub fn get_unmasked(&self, id: u64) -> Option<Exchange> {
        let ring = lock(&self.core.ring);
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
        let ring = lock(&self.core.ring);
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
        let ring = lock(&self.core.ring);
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
        let ring = lock(&self.core.ring);
        let (stages, open) = self.snapshot(|_| true);
        for exchange in &open {
            visit(Call::of(&exchange.summary));
        }
        for (_, record) in ring.iter().chain(stages.iter().flat_map(Stage::iter)) {
            visit(ring::decode_call(record));
        }
    }

    /// The exchanges in flight that match (unmasked: for devmesh's own
    /// words, never shown as they are).
    pub fn in_flight(&self, matches: impl Fn(&Exchange) -> bool) -> Vec<Exchange> {
        let mut open = Vec::new();
        for shard in &self.core.shards {
            open.extend(lock(&shard.0).open.iter().filter(|e| matches(e)).cloned());
        }
        open
    }

    /// Copies of the stages and of the open exchanges that match, taken
    /// under each shard's lock in turn: a long search then holds only the
    /// ring's lock, which no request waits for.
    fn snapshot(&self, matches: impl Fn(&Exchange) -> bool) -> (Vec<Stage>, Vec<Exchange>) {
        let mut stages = Vec::with_capacity(self.core.shards.len());
        let mut open = Vec::new();
        for shard in &self.core.shards {
            let inner = lock(&shard.0);
            open.extend(inner.open.iter().filter(|e| matches(e)).cloned());
            stages.push(inner.stage.clone());
        }
        (stages, open)
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
