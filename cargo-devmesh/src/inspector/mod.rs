//! The traffic inspector: every exchange through a front port, kept in a
//! bounded store, shown live on the supervisor's page and API, exported as
//! HAR or JSON lines, and replayed on demand.
//!
//! The proxy feeds it; it never forwards anything itself (a replay is sent
//! to the front port like any request, and captured there).

mod callers;
mod exchange;
pub mod har;
mod ring;
mod store;
mod tee;
pub mod trace;

pub use callers::{Callers, EXTERNAL};
pub use exchange::{Body, Exchange, Headers, Kind, Summary};
pub use store::{Event, Filter, Open, Store, blank};
pub use tee::{Seen, Tee};

use devmesh::config::InspectorConfig;

/// What the proxy needs to capture.
#[derive(Debug)]
pub struct Inspector {
    pub store: Store,
    pub callers: Callers,
}

impl Inspector {
    /// An inspector fed by `threads` threads, each capturing into a
    /// shard of its own (numbered from 0); fails if the store's own thread
    /// cannot start.
    pub fn new(config: InspectorConfig, threads: usize) -> std::io::Result<Inspector> {
        Ok(Inspector {
            store: Store::new(config, threads)?,
            callers: Callers::default(),
        })
    }
}

/// The header a replay carries, naming the exchange it replays; the proxy
/// takes it off and answers with [`EXCHANGE_HEADER`].
pub const REPLAY_HEADER: &str = "x-devmesh-replay";
/// The id a replayed request was captured as.
pub const EXCHANGE_HEADER: &str = "x-devmesh-exchange";
