//! Remote backends: where services that don't run on this machine are found.
//!
//! A backend answers from memory, so `discover` stays synchronous and cheap;
//! one that asks the network (DNS SRV, etcd) keeps its answers fresh in the
//! background.

pub(crate) mod dns_srv;
#[cfg(feature = "etcd")]
pub mod etcd;
mod static_map;

pub use dns_srv::DnsSrv;
#[cfg(feature = "etcd")]
pub use etcd::Etcd;
pub use static_map::StaticMap;

use crate::Endpoint;

/// A place that knows where some services run.
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// Where it looks, for errors and [`crate::Source::Remote`]:
    /// ``static map in `devmesh.toml` ``.
    fn describe(&self) -> String;

    /// The endpoint of `name`, if this backend knows it. Answers from
    /// memory; a backend that asks the network may ask once, bounded in
    /// time, for a name it was never asked before.
    fn lookup(&self, name: &str) -> Option<Endpoint>;

    /// Every name it knows, for "not found" errors and near-miss hints.
    fn names(&self) -> Vec<String>;

    /// Why its answers are not current, while they are not (it does not
    /// answer; its last answers are kept).
    fn stale(&self) -> Option<String> {
        None
    }
}
