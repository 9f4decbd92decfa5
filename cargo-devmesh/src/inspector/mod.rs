//! The traffic inspector: every exchange through a front port, kept in a
//! bounded store, shown live on the supervisor's page and API, exported as
//! HAR or JSON lines, and replayed on demand.
//!
//! The proxy feeds it; it never forwards anything itself (a replay is sent
//! to the front port like any request, and captured there).

mod callers;
mod exchange;
pub mod har;
mod map;
mod mask;
mod ring;
mod store;
mod tee;
pub mod trace;

pub use callers::{Callers, EXTERNAL, TUNNEL};
pub use exchange::{Body, Exchange, Headers, Kind, Summary};
pub use map::CallMap;
pub use mask::Masker;
pub use store::{Event, Filter, Open, Store, Subscription};
pub use tee::{Seen, Tee};

use devmesh::config::InspectorConfig;

/// What the proxy needs to capture.
#[derive(Debug)]
pub struct Inspector {
    pub store: Store,
    pub callers: std::sync::Arc<Callers>,
    /// Proves a replay is the supervisor's own: a client that sends
    /// [`REPLAY_HEADER`] itself has it taken off and is not marked a replay.
    pub replay_key: String,
}

impl Inspector {
    /// An inspector fed by `threads` threads, each capturing into a
    /// shard of its own (numbered from 0); fails if the store's own thread
    /// cannot start.
    pub fn new(config: InspectorConfig, threads: usize) -> std::io::Result<Inspector> {
        Ok(Inspector {
            store: Store::new(config, threads)?,
            callers: std::sync::Arc::default(),
            replay_key: crate::secret::random_hex(16)?,
        })
    }

    /// The [`REPLAY_HEADER`] value of the supervisor's replay of exchange `id`.
    pub fn replay_header(&self, id: u64) -> String {
        format!("{id} {}", self.replay_key)
    }

    /// The exchange a [`REPLAY_HEADER`] value says is replayed, when it
    /// carries this run's key; `None` for one a client made up.
    pub fn replay_of(&self, value: &[u8]) -> Option<u64> {
        let (id, key) = std::str::from_utf8(value).ok()?.trim().split_once(' ')?;
        (key.len() == self.replay_key.len() && key == self.replay_key)
            .then(|| id.parse().ok())
            .flatten()
    }
}

/// The header a replay carries, `<id> <replay key>`, naming the exchange it
/// replays; the proxy takes it off and answers with [`EXCHANGE_HEADER`].
pub const REPLAY_HEADER: &str = "x-devmesh-replay";
/// The id a replayed request was captured as.
pub const EXCHANGE_HEADER: &str = "x-devmesh-exchange";

/// gRPC's status codes by number, as the gRPC spec names them.
const GRPC_CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// A gRPC outcome as the terminal shows it where an HTTP status goes:
/// `OK`, `NOT_FOUND (5)`, `UNAVAILABLE (14): what it said`.
pub fn grpc_outcome(code: u8, message: Option<&str>) -> String {
    let name = GRPC_CODES.get(usize::from(code)).copied().unwrap_or("UNKNOWN_CODE");
    match (code, message.filter(|m| !m.is_empty())) {
        (0, _) => name.to_owned(),
        (_, None) => format!("{name} ({code})"),
        (_, Some(message)) => format!("{name} ({code}): {message}"),
    }
}
