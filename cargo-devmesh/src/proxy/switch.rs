//! A front port's switch between a service's copy here and its copy in
//! the sandbox. The route the proxy reads is the local one, the remote
//! one, or (`auto`) the local one while it serves and the remote one
//! otherwise. A switch changes only where new requests go: one in flight
//! holds its instance by its lease and finishes there, and a request
//! waiting for a route takes the new one. Callers keep the front address.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use devmesh::config::Mode;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{Backend, Route};

/// A service's copy in the sandbox.
#[derive(Debug, Clone)]
pub struct Remote {
    /// As configured: where its traffic goes, for `ps` and the page.
    pub url: String,
    pub backend: Backend,
}

/// Where a front port sends new requests now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Traffic {
    /// To the copy here.
    Local,
    /// To the copy in the sandbox.
    Remote,
    /// Nowhere yet: requests wait for the copy here to be ready.
    Waiting,
}

/// One service's switch: its mode, and where its traffic goes.
#[derive(Debug)]
pub struct Switch {
    mode: watch::Sender<Mode>,
    /// The route the front port reads, and where it sends traffic.
    front: Arc<Front>,
    /// The route here, when the service has a copy here.
    local: Option<watch::Receiver<Route>>,
}

#[derive(Debug)]
struct Front {
    route: watch::Sender<Route>,
    traffic: watch::Sender<Traffic>,
    /// The copy in the sandbox; it moves when its backend says so.
    remote: std::sync::Mutex<Option<Remote>>,
}

impl Front {
    /// Routes by `mode` with the route here being `local`.
    fn follow(&self, mode: Mode, local: Option<Route>) {
        let remote = self.remote();
        let (route, traffic) = effective(mode, local, remote.as_ref().map(|r| &r.backend));
        self.route.send_replace(route);
        self.traffic
            .send_if_modified(|was| std::mem::replace(was, traffic) != traffic);
    }

    fn remote(&self) -> Option<Remote> {
        self.remote.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Why a mode was not set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModeRefused {
    #[error("unknown service `{0}` (hint: `cargo devmesh ps` lists them)")]
    Unknown(String),
    #[error(
        "`{0}` has no copy in the sandbox (hint: give it one in `[remote.static]`, `[remote.dns]` or `[remote.etcd]` in devmesh.toml)"
    )]
    NoRemote(String),
    #[error("`{0}` runs only in the sandbox: it is no service of this workspace")]
    NoLocal(String),
}

/// The route here of a service, as its task sets it: the front route
/// follows at once, so that when a restart answers, new requests already
/// go to the new instance.
#[derive(Debug, Clone)]
pub struct LocalRoute {
    here: watch::Sender<Route>,
    front: Arc<Front>,
    mode: watch::Receiver<Mode>,
}

impl LocalRoute {
    /// Sets the route here; the route it replaced.
    pub fn send_replace(&self, route: Route) -> Route {
        let was = self.here.send_replace(route.clone());
        self.front.follow(*self.mode.borrow(), Some(route));
        was
    }
}

impl Switch {
    /// A switch for the front route of a service with a copy here (when
    /// `here`) and a copy there (`remote`), starting in `mode`. Returns the
    /// switch, the route the front port reads, and, for a copy here, the
    /// handle its task sets its route with.
    pub fn start(
        here: bool,
        remote: Option<Remote>,
        mode: Mode,
    ) -> (Switch, watch::Receiver<Route>, Option<LocalRoute>) {
        let (mode_tx, mode_rx) = watch::channel(mode);
        let first = Route::Waiting(devmesh::registry::Status::Building);
        let (route, traffic) = effective(mode, here.then(|| first.clone()), remote.as_ref().map(|r| &r.backend));
        let (route_tx, route_rx) = watch::channel(route);
        let front = Arc::new(Front {
            route: route_tx,
            traffic: watch::channel(traffic).0,
            remote: std::sync::Mutex::new(remote),
        });
        let (local, handle) = match here {
            true => {
                let here = watch::channel(first).0;
                let handle = LocalRoute {
                    here: here.clone(),
                    front: Arc::clone(&front),
                    mode: mode_rx,
                };
                (Some(here.subscribe()), Some(handle))
            }
            false => (None, None),
        };
        let switch = Switch {
            mode: mode_tx,
            front,
            local,
        };
        (switch, route_rx, handle)
    }

    /// The instance here that the service's route names, when one is ready.
    pub fn local_backend(&self) -> Option<super::Backend> {
        match &*self.local.as_ref()?.borrow() {
            Route::Ready(backend) => Some(backend.clone()),
            Route::Waiting(_) => None,
        }
    }

    pub fn mode(&self) -> Mode {
        *self.mode.borrow()
    }

    /// Where new requests go now.
    pub fn traffic(&self) -> Traffic {
        *self.front.traffic.borrow()
    }

    /// The copy in the sandbox, as it is now.
    pub fn remote(&self) -> Option<Remote> {
        self.front.remote()
    }

    /// The copy in the sandbox moved (its DNS record or etcd key changed):
    /// new requests that go there go to `remote`; those in flight finish
    /// where they are.
    pub fn move_remote(&self, remote: Remote) {
        *self.front.remote.lock().unwrap_or_else(|e| e.into_inner()) = Some(remote);
        let here = self.local.as_ref().map(|l| l.borrow().clone());
        self.front.follow(self.mode(), here);
    }

    /// Sends new requests by `mode` from now on; where they go then.
    pub fn set(&self, service: &str, mode: Mode) -> Result<Traffic, ModeRefused> {
        match mode {
            Mode::Remote | Mode::Auto if self.remote().is_none() => Err(ModeRefused::NoRemote(service.to_owned())),
            Mode::Local | Mode::Auto if self.local.is_none() => Err(ModeRefused::NoLocal(service.to_owned())),
            _ => {
                self.mode.send_replace(mode);
                let here = self.local.as_ref().map(|l| l.borrow().clone());
                self.front.follow(mode, here);
                Ok(self.traffic())
            }
        }
    }
}

/// The route that `mode` gives, with the local route `local` and the
/// remote instance `remote`, and where it sends traffic.
fn effective(mode: Mode, local: Option<Route>, remote: Option<&Backend>) -> (Route, Traffic) {
    let to_remote = |backend: &Backend| (Route::Ready(backend.clone()), Traffic::Remote);
    let here = |route: Route| {
        let traffic = match route {
            Route::Ready(_) => Traffic::Local,
            Route::Waiting(_) => Traffic::Waiting,
        };
        (route, traffic)
    };
    match (mode, local, remote) {
        (_, None, Some(remote)) => to_remote(remote),
        (Mode::Remote, _, Some(remote)) => to_remote(remote),
        (Mode::Auto, Some(Route::Waiting(_)), Some(remote)) => to_remote(remote),
        (_, Some(local), _) => here(local),
        (_, None, None) => (Route::Waiting(devmesh::registry::Status::Stopped), Traffic::Waiting),
    }
}

/// Every front port, by service: its address and its switch. Fixed when
/// the run starts, but for the sandbox's copies that appear and go while
/// it runs (see `mesh::remotes`).
#[derive(Debug, Default)]
pub struct Switches(RwLock<BTreeMap<String, FrontPort>>);

/// A front port: where callers reach a service, and where it sends them.
#[derive(Debug, Clone)]
pub struct FrontPort {
    pub addr: SocketAddr,
    pub switch: Arc<Switch>,
}

impl Switches {
    pub fn insert(&self, service: String, addr: SocketAddr, switch: Switch) {
        let port = FrontPort {
            addr,
            switch: Arc::new(switch),
        };
        self.write().insert(service, port);
    }

    pub fn remove(&self, service: &str) -> Option<FrontPort> {
        self.write().remove(service)
    }

    pub fn get(&self, service: &str) -> Option<Arc<Switch>> {
        self.read().get(service).map(|port| Arc::clone(&port.switch))
    }

    /// The front address of `service`.
    pub fn front(&self, service: &str) -> Option<SocketAddr> {
        self.read().get(service).map(|port| port.addr)
    }

    /// Every front port, as they are now, by service.
    pub fn all(&self) -> BTreeMap<String, FrontPort> {
        self.read().clone()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, FrontPort>> {
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, FrontPort>> {
        self.0.write().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use devmesh::registry::Status;

    fn local() -> Backend {
        Backend::new("127.0.0.1:1".parse().unwrap())
    }

    fn remote() -> Backend {
        Backend::remote("127.0.0.1:2".parse().unwrap(), "sandbox:80")
    }

    #[test]
    fn each_mode_routes_where_it_says() {
        let (here, there) = (local(), remote());
        let ready = || Some(Route::Ready(here.clone()));
        let waiting = || Some(Route::Waiting(Status::Starting));
        let traffic = |mode, local| effective(mode, local, Some(&there)).1;
        assert_eq!(traffic(Mode::Local, ready()), Traffic::Local);
        assert_eq!(traffic(Mode::Local, waiting()), Traffic::Waiting);
        assert_eq!(traffic(Mode::Remote, ready()), Traffic::Remote);
        assert_eq!(traffic(Mode::Auto, ready()), Traffic::Local);
        assert_eq!(traffic(Mode::Auto, waiting()), Traffic::Remote);
        assert_eq!(traffic(Mode::Local, None), Traffic::Remote, "only in the sandbox");
        assert_eq!(effective(Mode::Auto, waiting(), None).1, Traffic::Waiting);
    }

    #[test]
    fn the_front_route_follows_the_mode_and_the_local_route_at_once() {
        let remote = Remote {
            url: "http://sandbox".into(),
            backend: remote(),
        };
        let (switch, front, local) = Switch::start(true, Some(remote), Mode::Auto);
        let local = local.unwrap();
        assert!(
            matches!(&*front.borrow(), Route::Ready(b) if b.host.is_some()),
            "auto: remote while building"
        );
        let here = self::local();
        local.send_replace(Route::Ready(here.clone()));
        assert!(
            matches!(&*front.borrow(), Route::Ready(b) if b.same(&here)),
            "auto: local once it serves, at once"
        );
        assert_eq!(switch.set("orders", Mode::Remote), Ok(Traffic::Remote));
        assert!(
            matches!(&*front.borrow(), Route::Ready(b) if b.host.is_some()),
            "remote at once"
        );
        assert_eq!(switch.set("orders", Mode::Local), Ok(Traffic::Local));
        assert!(matches!(&*front.borrow(), Route::Ready(b) if b.same(&here)));

        let (only_here, _, _) = Switch::start(true, None, Mode::Local);
        assert_eq!(
            only_here.set("orders", Mode::Remote),
            Err(ModeRefused::NoRemote("orders".into()))
        );
    }
}
