//! The supervisor: one task per service, owning its processes (started,
//! readied, restarted blue/green, stopped, ended with their groups when
//! the supervisor dies). Everything else acts on a service through its
//! [`ServiceHandle`]: the API, `--watch`, a test.
//!
//! It owns processes; the proxy owns connections, the logs module owns log
//! files. What ties them together is the `mesh` module.

mod command;
pub mod process;
mod readiness;
pub mod service;
pub mod watchdog;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use devmesh::config::Mode;
use devmesh::registry::Status;

use crate::build::Builder;
use crate::errors::PlanError;
use crate::inspector::Callers;
use crate::logs::Logs;
use crate::proxy::switch::ModeRefused;
use crate::proxy::{Switches, Traffic};
use crate::state::RegistryCopy;
pub use command::{Done, Outcome, Refused, Ticket};
pub use service::{ServiceHandle, ServiceState};

/// What every service task shares: how to build, spawn, log and publish.
#[derive(Debug)]
pub struct Supervisor {
    /// Told which process is which service, to name callers.
    pub callers: Arc<Callers>,
    pub spawner: process::Spawner,
    pub logs: Logs,
    pub builder: Arc<Builder>,
    /// The registry as the supervisor holds it.
    pub registry: Arc<RegistryCopy>,
    pub config_path: Option<PathBuf>,
    /// Every service's front address, for `inject_env`.
    pub fronts: BTreeMap<String, SocketAddr>,
    /// SIGTERM → SIGKILL.
    pub grace: Duration,
    /// How long a replaced instance stays for what is open to it.
    pub drain: Duration,
    /// The DNS server's address, for `DEVMESH_DNS`.
    pub dns: Option<SocketAddr>,
    /// The OTLP endpoint's address, for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub otlp: Option<SocketAddr>,
}

/// The services of a run, by name: their handles, and what they are doing.
#[derive(Debug, Clone, Default)]
pub struct Services(BTreeMap<String, ServiceHandle>);

impl Services {
    pub fn insert(&mut self, name: String, handle: ServiceHandle) {
        self.0.insert(name, handle);
    }

    /// Service `name`, or an error naming the services there are.
    pub fn get(&self, name: &str) -> Result<&ServiceHandle, PlanError> {
        self.0.get(name).ok_or_else(|| PlanError::UnknownService {
            name: name.to_owned(),
            known: self.names().map(str::to_owned).collect(),
        })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// What each service is doing now, by name.
    pub fn states(&self) -> Vec<ServiceState> {
        self.0.values().map(|h| h.state.borrow().clone()).collect()
    }

    pub fn handles(&self) -> impl Iterator<Item = (&str, &ServiceHandle)> {
        self.0.iter().map(|(name, handle)| (name.as_str(), handle))
    }

    /// Sets where service `name`'s front port sends new requests (those in
    /// flight finish where they are). A copy here that is stopped (it began
    /// in `remote` mode) is started for `local` and `auto`; the answer
    /// comes once it serves. Returns where traffic goes then.
    pub async fn set_mode(&self, switches: &Switches, name: &str, mode: Mode) -> Result<Traffic, ModeRefused> {
        let switch = switches
            .get(name)
            .ok_or_else(|| ModeRefused::Unknown(name.to_owned()))?;
        let traffic = switch.set(name, mode)?;
        if mode != Mode::Remote
            && let Some(handle) = self.0.get(name)
            && handle.state.borrow().status == Status::Stopped
        {
            let _ = handle.start().await;
            return Ok(switch.traffic());
        }
        Ok(traffic)
    }
}
