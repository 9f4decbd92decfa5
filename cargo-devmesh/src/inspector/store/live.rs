//! What live listeners (the page, `traffic -f`) are told: each shard notes
//! what changed, and the keeper tells it a tick at a time.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Serialize;
use tokio::sync::broadcast;

use super::{Core, Store, lock};
use crate::inspector::exchange::{Exchange, Summary};

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
pub(super) const TICK: std::time::Duration = std::time::Duration::from_millis(50);

/// Changes a shard tells listeners of in a tick at most; past that they
/// hear they lagged. The channel holds a tick's worth.
pub(super) const MAX_CHANGES: usize = 256;

/// What changed in a shard since the last tick.
#[derive(Debug, Default)]
pub(super) struct Changes {
    pub(super) changed: Vec<Summary>,
    /// Whether more changed than is told in a tick.
    pub(super) lagged: bool,
}

impl Changes {
    /// Notes a change to `exchange`.
    pub(super) fn note(&mut self, exchange: &Exchange) {
        if self.changed.len() < MAX_CHANGES {
            self.changed.push(exchange.summary.clone());
        } else {
            self.lagged = true;
        }
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

impl Store {
    /// Live events, from now on, for as long as the subscription is kept.
    pub fn subscribe(&self) -> Subscription {
        self.core.listeners.fetch_add(1, Ordering::Relaxed);
        // The keeper starts ticking.
        self.keeper.0.unpark();
        Subscription {
            receiver: self.core.events.subscribe(),
            listeners: Arc::clone(&self.core.listeners),
        }
    }
}

impl Core {
    /// Whether anyone listens for live events (gathering them costs).
    pub(super) fn listening(&self) -> bool {
        self.listeners.load(Ordering::Relaxed) > 0
    }

    /// Tells listeners what changed since the last tick (`news` is where
    /// a shard's changes are taken to, kept from tick to tick).
    pub(super) fn tell_listeners(&self, news: &mut Vec<Summary>) {
        let mut lagged = false;
        for shard in &self.shards {
            {
                let mut inner = lock(&shard.0);
                std::mem::swap(&mut inner.changes.changed, news);
                lagged |= std::mem::take(&mut inner.changes.lagged);
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
