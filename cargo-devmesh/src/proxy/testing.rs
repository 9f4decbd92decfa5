//! Front ports for tests: one served by proxy threads of its own.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use devmesh::config::InspectorConfig;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{Backend, Door, FaultState, Front, Route, RoutedCopies, Timeouts};
use crate::inspector::Inspector;

/// Proxy threads in tests: more than one, so that connections are dealt
/// between threads and captured into several shards.
pub const THREADS: usize = 2;

/// Connections a test's front port serves at once.
pub const CONNECTIONS: usize = 300;

/// A front port being served, until `shutdown`.
pub struct TestFront {
    pub addr: SocketAddr,
    pub door: Door,
    pub inspector: Arc<Inspector>,
    pub shutdown: CancellationToken,
}

/// A front port for `backend`, as a run's would be.
pub fn front(backend: SocketAddr) -> TestFront {
    let (_, route) = watch::channel(Route::Ready(Backend::new(backend)));
    let waits = (Duration::from_secs(5), Duration::from_secs(60));
    serve(route, 1024, waits, FaultState::new().1, Arc::default())
}

/// A front port on `route`, capturing bodies up to `max_body`, with the
/// `ready` and `response` waits, the faults `faults` sets and developers'
/// copies in `routed`.
pub fn serve(
    route: watch::Receiver<Route>,
    max_body: usize,
    (ready, response): (Duration, Duration),
    faults: FaultState,
    routed: Arc<RoutedCopies>,
) -> TestFront {
    let mut config = InspectorConfig::default();
    config.max_body = max_body;
    let inspector = Arc::new(Inspector::new(config, THREADS).unwrap());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let front = Front {
        service: "svc".into(),
        listener,
        route,
        protocol: devmesh::config::Protocol::Http,
        timeouts: Timeouts {
            head: Duration::from_millis(300),
            ..Timeouts::new(ready, response)
        },
        max_connections: CONNECTIONS,
        inspector: Arc::clone(&inspector),
        faults,
        routed,
        developer_route: None,
    };
    let (proxy, _) = super::start(THREADS, crate::accept::on_stderr("devmesh"), shutdown.clone()).unwrap();
    let door = proxy.serve(front, shutdown.clone()).unwrap();
    TestFront {
        addr,
        door,
        inspector,
        shutdown,
    }
}
