//! Remote backends: where services that don't run on this machine are found.
//!
//! A backend answers from memory, so `discover` stays synchronous and cheap;
//! one that asks the network (DNS SRV, etcd) keeps its answers fresh in the
//! background.

mod static_map;

pub use static_map::StaticMap;

use crate::Endpoint;

/// A place that knows where some services run.
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// Where it looks, for errors and [`crate::Source::Remote`]:
    /// ``static map in `devmesh.toml` ``.
    fn describe(&self) -> String;

    /// The endpoint of `name`, if this backend knows it. Must not block.
    fn lookup(&self, name: &str) -> Option<Endpoint>;

    /// Every name it knows, for "not found" errors and near-miss hints.
    fn names(&self) -> Vec<String>;
}
