//! Where a front port sends traffic right now, set by the supervisor.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use devmesh::registry::Status;
use tokio::sync::Notify;

/// The state of a service's route, published by its supervisor task.
#[derive(Debug, Clone)]
pub enum Route {
    /// Requests go to this instance.
    Ready(Backend),
    /// No instance serves; requests wait. The status says why.
    Waiting(Status),
}

/// One running instance of a service, here or in the sandbox.
#[derive(Debug, Clone)]
pub struct Backend {
    /// Where the instance listens (its own socket, not the front port).
    pub addr: SocketAddr,
    /// The `Host` a remote instance is asked with (its URL's authority):
    /// a sandbox's router picks the service by it. `None` for a local one,
    /// which gets the request's own.
    pub host: Option<Arc<str>>,
    /// Counts what is in flight to this instance, so it is stopped only
    /// once idle: a count for each proxy thread, which would otherwise pass
    /// one back and forth on every request.
    drains: Arc<[Arc<Drain>]>,
    /// Told by the proxy when a request has waited long for an answer, so
    /// the supervisor checks whether the instance still answers.
    stalled: Arc<Notify>,
    /// Set when the instance is stopped while connections were still open
    /// to it, so that their captures say they were cut.
    cut: Arc<AtomicBool>,
    /// Set when the instance was killed from outside (SIGKILL, SIGTERM: the
    /// OOM killer, a user): the requests it had then were not its undoing.
    killed: Arc<AtomicBool>,
}

impl Backend {
    pub fn new(addr: SocketAddr) -> Backend {
        let (stalled, cut, killed) = (
            Arc::new(Notify::new()),
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        Backend {
            addr,
            host: None,
            drains: (0..super::MAX_THREADS)
                .map(|_| {
                    Arc::new(Drain {
                        stalled: Arc::clone(&stalled),
                        cut: Arc::clone(&cut),
                        killed: Arc::clone(&killed),
                        ..Drain::default()
                    })
                })
                .collect(),
            stalled,
            cut,
            killed,
        }
    }

    /// A remote instance at `addr`, asked for as `host`.
    pub fn remote(addr: SocketAddr, host: &str) -> Backend {
        Backend {
            host: Some(Arc::from(host)),
            ..Backend::new(addr)
        }
    }

    /// Whether it is the same instance as `other`.
    pub fn same(&self, other: &Backend) -> bool {
        Arc::ptr_eq(&self.stalled, &other.stalled)
    }

    /// Requests and connections in flight to the instance.
    pub fn open(&self) -> usize {
        self.drains.iter().map(|d| d.active.load(Ordering::SeqCst)).sum()
    }

    /// Marks what is still open to the instance as cut: it is being stopped.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }

    /// Marks the instance as killed from outside (see [`Lease::was_killed`]).
    pub fn killed(&self) {
        self.killed.store(true, Ordering::SeqCst);
    }

    /// Waits until a request to the instance has waited long for its answer.
    pub async fn stalled(&self) {
        self.stalled.notified().await;
    }

    /// Holds the instance for a request or connection through proxy thread `thread`.
    pub fn lease(&self, thread: usize) -> Lease {
        self.drains[thread % self.drains.len()].lease()
    }

    /// Waits until nothing is in flight to the instance. Leases are taken
    /// while the route names the instance, so once it names another, each
    /// count only falls.
    pub async fn idle(&self) {
        for drain in self.drains.iter() {
            drain.idle().await;
        }
    }
}

/// Counts requests and connections in flight to one instance through one
/// proxy thread; on cache lines of its own.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct Drain {
    active: AtomicUsize,
    idle: Notify,
    /// The instance's [`Backend::stalled`].
    stalled: Arc<Notify>,
    /// The instance's [`Backend::cut`].
    cut: Arc<AtomicBool>,
    /// The instance's [`Backend::killed`].
    killed: Arc<AtomicBool>,
}

/// Held while a request or connection is in flight; released on drop.
#[derive(Debug)]
pub struct Lease(Arc<Drain>);

impl Lease {
    /// Says that the request holding this lease has waited long for an answer.
    pub fn suspect(&self) {
        self.0.stalled.notify_one();
    }

    /// Whether this holds `backend` (and not another instance).
    pub fn holds(&self, backend: &Backend) -> bool {
        Arc::ptr_eq(&self.0.stalled, &backend.stalled)
    }

    /// Whether the instance was killed from outside: a request it had then
    /// may go to the next instance (one that killed it would kill that too).
    pub fn was_killed(&self) -> bool {
        self.0.killed.load(Ordering::SeqCst)
    }

    /// Whether the instance was stopped while this was open.
    pub fn was_cut(&self) -> bool {
        self.0.cut.load(Ordering::SeqCst)
    }
}

impl Drain {
    fn lease(self: &Arc<Self>) -> Lease {
        self.active.fetch_add(1, Ordering::SeqCst);
        Lease(Arc::clone(self))
    }

    /// Waits until nothing is in flight.
    async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.active.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn idle_waits_for_every_lease() {
        let drain = Arc::new(Drain::default());
        drain.idle().await;
        let first = drain.lease();
        let second = drain.lease();
        let waiter = tokio::spawn({
            let drain = Arc::clone(&drain);
            async move { drain.idle().await }
        });
        drop(first);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(second);
        waiter.await.unwrap();
    }

    #[tokio::test]
    async fn an_instance_is_idle_once_no_thread_holds_it() {
        for last in 0..2 {
            let backend = Backend::new(SocketAddr::from(([127, 0, 0, 1], 1)));
            let mut leases = [Some(backend.lease(0)), Some(backend.lease(1))];
            let waiter = tokio::spawn({
                let backend = backend.clone();
                async move { backend.idle().await }
            });
            leases[1 - last] = None;
            tokio::task::yield_now().await;
            assert!(!waiter.is_finished(), "thread {last} still holds it");
            leases[last] = None;
            waiter.await.unwrap();
        }
    }
}
