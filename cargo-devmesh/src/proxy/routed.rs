//! Developers' copies in a shared sandbox: a request that carries a route
//! (`baggage: devmesh-route=NAME`, see `devmesh::route`) goes to the copy
//! that route registered for the service, if there is one; every other
//! request goes where the front port's route says. A request with no
//! route, or when no copy is registered at all, costs one atomic load.

use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};

use super::Backend;

/// The routed copies the sandbox knows, by service, then by route.
#[derive(Debug, Default)]
pub struct RoutedCopies {
    copies: RwLock<HashMap<String, HashMap<String, RoutedCopy>>>,
    /// Whether there is any: most requests look no further.
    any: AtomicBool,
    /// Set when this supervisor stops: a request routed here from a
    /// sandbox is sent back (see `SENT_BACK`), so that none is lost with
    /// the tunnel.
    leaving: AtomicBool,
    /// How many have been sent back.
    sent_back: std::sync::atomic::AtomicU64,
}

/// A developer's copy of a service, as a front port reaches it.
#[derive(Debug, Clone)]
pub struct RoutedCopy {
    /// Where the route says it is (the developer's tunnel).
    pub url: String,
    pub backend: Backend,
    /// A team token the relay asks its callers for (`x-devmesh-access`).
    pub access: Option<std::sync::Arc<str>>,
    /// Whether its supervisor is connected to the relay, as last asked
    /// (see `mesh::remotes::follow_routes`): while not, its requests go to
    /// the port's own copy.
    pub connected: std::sync::Arc<AtomicBool>,
    /// Its route's requests go to it even then, and fail rather than go
    /// to the port's own (`route = "strict"`).
    pub strict: bool,
}

impl RoutedCopies {
    /// The copy of `service` for `route`, connected or not.
    pub fn get(&self, service: &str, route: &str) -> Option<RoutedCopy> {
        if !self.any.load(Ordering::Relaxed) {
            return None;
        }
        self.read().get(service)?.get(route).cloned()
    }

    /// Marks this supervisor's own copies as leaving.
    pub fn leave(&self) {
        self.leaving.store(true, Ordering::Relaxed);
    }

    /// Whether this supervisor's own copies are leaving.
    pub fn leaving(&self) -> bool {
        self.leaving.load(Ordering::Relaxed)
    }

    /// Counts a request sent back while leaving.
    pub fn sent_back(&self) {
        self.sent_back.fetch_add(1, Ordering::Relaxed);
    }

    /// Waits until no request has been sent back for `quiet`: the sandbox
    /// has stopped routing here (it learns that the route is gone from
    /// etcd, which says nothing back).
    pub async fn quiet_for(&self, quiet: std::time::Duration) {
        loop {
            let before = self.sent_back.load(Ordering::Relaxed);
            tokio::time::sleep(quiet).await;
            if self.sent_back.load(Ordering::Relaxed) == before {
                return;
            }
        }
    }

    /// Whether any copy is registered.
    pub fn is_empty(&self) -> bool {
        !self.any.load(Ordering::Relaxed)
    }

    /// Every copy, connected or not: ((service, route), copy).
    pub fn all(&self) -> Vec<((String, String), RoutedCopy)> {
        self.read()
            .iter()
            .flat_map(|(service, routes)| {
                routes
                    .iter()
                    .map(|(route, copy)| ((service.clone(), route.clone()), copy.clone()))
            })
            .collect()
    }

    /// Every copy: (service, route, URL), in order.
    pub fn list(&self) -> Vec<(String, String, String)> {
        let mut all: Vec<_> = self
            .all()
            .into_iter()
            .map(|((service, route), copy)| (service, route, copy.url))
            .collect();
        all.sort();
        all
    }

    /// Puts `copy` for `service` and `route`, in place of any.
    pub fn insert(&self, service: &str, route: &str, copy: RoutedCopy) {
        let mut copies = self.write();
        copies
            .entry(service.to_owned())
            .or_default()
            .insert(route.to_owned(), copy);
        self.any.store(true, Ordering::Relaxed);
    }

    /// Takes the copy of `service` for `route` away.
    pub fn remove(&self, service: &str, route: &str) {
        let mut copies = self.write();
        if let Some(routes) = copies.get_mut(service) {
            routes.remove(route);
            if routes.is_empty() {
                copies.remove(service);
            }
        }
        self.any.store(!copies.is_empty(), Ordering::Relaxed);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, HashMap<String, RoutedCopy>>> {
        self.copies.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, HashMap<String, RoutedCopy>>> {
        self.copies.write().unwrap_or_else(|e| e.into_inner())
    }
}
