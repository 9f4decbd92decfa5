//! devmesh: find the services of a microservice system wherever they run,
//! on this machine or in a shared sandbox.
//!
//! ```no_run
//! # async fn demo() -> Result<(), devmesh::Error> {
//! // Serve where the supervisor says (an inherited socket, `PORT`, …).
//! let listener = devmesh::listener().await?;
//! // Find another service: env override, live registry, remote backends.
//! let orders = devmesh::discover("orders")?;
//! let url = orders.join("/orders/42");
//! # Ok(()) }
//! ```
//!
//! # Resolution order
//!
//! [`discover`] answers from the first place that knows the service:
//!
//! 1. `DEVMESH_<NAME>_URL` (name upper-cased, `-` to `_`), read once at first use;
//! 2. the live registry `<target>/devmesh/registry.json` (or `DEVMESH_REGISTRY`),
//!    kept in memory and reloaded when the file changes;
//! 3. the remote backends in `devmesh.toml` (`[remote.static]`).
//!
//! A miss is an error that lists every place looked in and what each had.
//!
//! # Layout
//!
//! - [`endpoint`](Endpoint): what `discover` returns;
//! - `resolve`: the resolution order ([`Resolver`]);
//! - [`registry`]: the registry file's format, its writers, and the live
//!   snapshot readers use;
//! - [`config`](config): `devmesh.toml`;
//! - [`remote`]: backends for services that run elsewhere;
//! - [`dns`]: DNS messages, for the supervisor's DNS server and the SRV backend;
//! - `listener`: the socket a service serves on;
//! - [`trace`]: passing a request's trace on to the calls it makes;
//! - `errors`: every error, each naming its subject and the fix.
//!
//! # Tests across services
//!
//! `devmesh-testing` (a dev-dependency) starts a mesh of the workspace's
//! services inside `cargo test`; with it, `#[devmesh::test]` (the
//! `macros` feature, which `devmesh-testing` turns on) gives an async
//! test the mesh it names:
//!
//! ```ignore
//! use devmesh_testing::Mesh;
//!
//! #[devmesh::test(services("gateway"))]
//! async fn checkout_charges_the_order(mesh: Mesh) {
//!     let answer = reqwest::get(mesh.url("gateway") + "/checkout/tea?quantity=2").await.unwrap();
//!     assert_eq!(answer.status(), 200);
//!     mesh.traffic().await.to("payments").request("POST", "/charge")
//!         .with_json("amount_cents", 700).assert_once();
//! }
//! ```

pub mod config;
pub mod dns;
mod endpoint;
mod errors;
#[doc(hidden)]
pub mod fuzzing;
mod listener;
pub mod name;
pub mod registry;
pub mod remote;
mod resolve;
pub mod route;
pub mod trace;

use std::sync::OnceLock;

/// `#[devmesh::test(services("a", "b"))] async fn t(mesh: Mesh) { … }`:
/// an async test given a mesh of the services it names, started and
/// ready before the body runs, stopped after it (see `devmesh-testing`).
#[cfg(feature = "macros")]
pub use devmesh_macros::test;

pub use endpoint::{Endpoint, Source, UrlError};
pub use errors::{Error, Place, RegistryProblem, Searched};
pub use listener::{ListenSpec, listener, std_listener};
pub use resolve::{Resolver, ResolverBuilder};

static RESOLVER: OnceLock<Resolver> = OnceLock::new();

/// The process's resolver, built from its environment at first use.
pub fn resolver() -> &'static Resolver {
    RESOLVER.get_or_init(Resolver::from_env)
}

/// Where service `name` runs. Synchronous and cheap: after the first call
/// (which reads config and starts watching the registry), a hit is a hash
/// lookup in memory.
pub fn discover(name: &str) -> Result<Endpoint, Error> {
    resolver().discover(name)
}

/// [`discover`] for async code: the first call's file reads run on tokio's
/// blocking pool instead of the caller's worker thread.
pub async fn discover_async(name: &str) -> Result<Endpoint, Error> {
    if let Some(resolver) = RESOLVER.get() {
        return resolver.discover(name);
    }
    match tokio::task::spawn_blocking(resolver).await {
        Ok(resolver) => resolver.discover(name),
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// Follows where `name` runs: see [`Watch::next`].
pub fn watch(name: &str) -> Watch {
    Watch {
        name: name.to_owned(),
        resolver: resolver(),
        changes: resolver().registry_changes(),
        last: None,
    }
}

/// Yields a service's endpoint each time it changes. Made by [`watch`].
#[derive(Debug)]
pub struct Watch {
    name: String,
    resolver: &'static Resolver,
    /// `None` without a registry: then nothing ever changes.
    changes: Option<tokio::sync::watch::Receiver<u64>>,
    last: Option<Endpoint>,
}

impl Watch {
    /// The endpoint, the first time as soon as the service is known, then
    /// each time its URL or source changes. Waits while the service is
    /// unknown; fails at once only for a name that cannot be a service.
    pub async fn next(&mut self) -> Result<Endpoint, Error> {
        loop {
            if let Some(changes) = &mut self.changes {
                changes.borrow_and_update();
            }
            match self.resolver.discover(&self.name) {
                Ok(endpoint) if self.last.as_ref() != Some(&endpoint) => {
                    self.last = Some(endpoint.clone());
                    return Ok(endpoint);
                }
                Err(e @ Error::InvalidName { .. }) => return Err(e),
                Err(e @ Error::BadOverride { .. }) => return Err(e),
                _ => {}
            }
            match &mut self.changes {
                Some(changes) => {
                    if changes.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
                None => std::future::pending::<()>().await,
            }
        }
    }
}

/// The URL remote services call this service back on: `DEVMESH_CALLBACK_URL`,
/// else the tunnel URL the registry holds for this service
/// (`DEVMESH_SERVICE`), else the service's own URL.
pub fn callback_url() -> Result<String, Error> {
    if let Some(url) = std::env::var("DEVMESH_CALLBACK_URL").ok().filter(|u| !u.is_empty()) {
        return Ok(url);
    }
    let own = std::env::var("DEVMESH_SERVICE").map_err(|_| Error::NoCallbackUrl)?;
    let resolver = resolver();
    if let Some(url) = resolver.registry_entry(&own).and_then(|e| e.callback_url) {
        return Ok(url);
    }
    Ok(resolver.discover(&own)?.url().to_owned())
}

/// Reports a problem to the service's log: through `tracing` when the
/// service has a subscriber, else on stderr, so it is never lost.
pub(crate) fn warn(message: &str) {
    if tracing::dispatcher::has_been_set() {
        tracing::warn!("devmesh: {message}");
    } else {
        eprintln!("devmesh: warning: {message}");
    }
}
