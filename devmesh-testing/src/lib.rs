//! Integration tests across services: a real mesh of the workspace's
//! services inside `cargo test` (or `cargo nextest run`), on the same code
//! `cargo devmesh run` runs, and assertions on what went between them.
//!
//! ```ignore
//! use std::time::Duration;
//! use devmesh_testing::{Fault, Mesh};
//!
//! #[devmesh::test(services("gateway"))]
//! async fn a_slow_payment_times_out(mesh: Mesh) {
//!     mesh.fault("payments", Fault::Latency(Duration::from_secs(5)));
//!     let answer = reqwest::get(mesh.url("gateway") + "/checkout/tea").await.unwrap();
//!     assert_eq!(answer.status(), 504);
//!     mesh.traffic().await.to("payments").request("POST", "/charge").assert_once();
//! }
//! ```
//!
//! Each mesh is a test's own: front ports from the kernel, bound before
//! any service starts (tests in parallel never collide), a registry in a
//! temporary folder, the workspace's `[remote]`, `[tunnel]` and sharing
//! left out (a test says what is remote: [`MeshBuilder::remote`],
//! [`MeshBuilder::handler`]). The services' binaries are built once per
//! test process and reused by every mesh in it. What the first mesh of a
//! process asks cargo (the workspace's metadata, a build) is kept beside
//! the test binaries for the next process while no manifest or source
//! changed: under nextest (a process a test) only the first asks.
//!
//! Every process of a mesh ends when it is dropped, also when the test
//! panics; when the test process itself is killed (SIGKILL), the mesh's
//! watchdog ends them.
//!
//! # Layout
//!
//! - `mesh`: [`Mesh`] and [`MeshBuilder`], on `cargo_devmesh::Mesh`;
//! - `handler`: services written in the test ([`MeshBuilder::handler`]);
//! - `captured`: services as captured ([`MeshBuilder::stand_in`]), and
//!   requests sent as a caller from outside ([`Mesh::send`]);
//! - `traffic`: [`Traffic`], what went between the services;
//! - `fault`: [`Fault`]s set on a service's front port.

mod captured;
mod fault;
mod handler;
mod kept;
mod mesh;
mod traffic;

pub use captured::{Answer, Captured};
pub use devmesh_macros::test;
pub use fault::Fault;
pub use handler::Reply;
/// What a handler written in the test sees and answers.
pub use http_body_util::Full;
pub use hyper::body::Bytes;
pub use hyper::{Request, Response, Version};
pub use mesh::{Error, Mesh, MeshBuilder};
pub use serde_json::{Value, json};
pub use traffic::{Call, Traffic};

/// Descriptor 3 held for the services' sockets from before `main` (as
/// `cargo devmesh` holds it from its first instruction), in every test
/// binary that links the harness: a mesh then spawns its services with
/// `posix_spawn` rather than a fork of the whole test process, a
/// millisecond less a mesh (bench/harness: 1.5× starting the services by
/// hand without it, 1.2× with it). By `main`, a runtime may hold it.
#[cfg(target_os = "linux")]
#[used]
#[unsafe(link_section = ".init_array")]
static HOLD_LISTEN_FD: extern "C" fn() = {
    extern "C" fn hold() {
        cargo_devmesh::supervisor::process::reserve_listen_fd();
    }
    hold
};

/// What `#[devmesh::test]` expands to calls; not an API.
#[doc(hidden)]
pub mod __private {
    use std::future::Future;

    use crate::{Mesh, MeshBuilder};

    /// A builder for the workspace of the package at `manifest_dir`.
    pub fn builder(manifest_dir: &str) -> MeshBuilder {
        MeshBuilder::in_package(manifest_dir)
    }

    /// Runs `body` with the mesh `builder` starts, on a runtime of its own;
    /// when the body panics, says what each service logged last and what
    /// went between them, then lets the panic go on (the mesh ends with
    /// it).
    #[track_caller]
    pub fn run<F, Fut, T>(builder: MeshBuilder, body: F) -> T
    where
        F: FnOnce(Mesh) -> Fut,
        Fut: Future<Output = T>,
    {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime for the test");
        let test = std::panic::Location::caller();
        // A mark left on this thread by an earlier test is not this one's.
        crate::traffic::table_shown();
        runtime.block_on(async move {
            let mesh = match builder.start().await {
                Ok(mesh) => mesh,
                Err(e) => panic!("devmesh: the mesh of the test at {test}: {e}"),
            };
            let mut report = PanicReport(Some(mesh.reporter()));
            let output = body(mesh).await;
            report.0 = None;
            output
        })
    }

    /// Meshes shared by the tests that ask (`#[devmesh::test(shared)]`),
    /// by the test's file and arguments: each on a runtime of its own that
    /// lives as long as the test process, and one test's turn at a time.
    struct Shared {
        runtime: tokio::runtime::Runtime,
        mesh: Result<Mesh, String>,
        turn: std::sync::Mutex<()>,
    }

    /// [`run`], on the mesh the tests of `key` share: started by the
    /// first of them, then each test's in turn. A test sees the traffic of
    /// its turn only; the faults it set are cleared and the services it
    /// stopped started again once it ends, passed or failed.
    #[track_caller]
    pub fn run_shared<F, Fut, T>(key: &'static str, builder: impl FnOnce() -> MeshBuilder, body: F) -> T
    where
        F: FnOnce(Mesh) -> Fut,
        Fut: Future<Output = T>,
    {
        use std::collections::HashMap;
        use std::sync::{Arc, LazyLock, Mutex};
        static SHARED: LazyLock<Mutex<HashMap<&'static str, Arc<Shared>>>> = LazyLock::new(Default::default);
        let test = std::panic::Location::caller();
        let shared = {
            let mut all = SHARED.lock().unwrap_or_else(|e| e.into_inner());
            let shared = all.entry(key).or_insert_with(|| {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("a tokio runtime for the shared mesh");
                let mesh = runtime.block_on(builder().start()).map_err(|e| e.to_string());
                Arc::new(Shared {
                    runtime,
                    mesh,
                    turn: Mutex::new(()),
                })
            });
            Arc::clone(shared)
        };
        let mesh = match &shared.mesh {
            Ok(mesh) => mesh,
            Err(e) => panic!("devmesh: the shared mesh of the tests at {test}: {e}"),
        };
        // A test that failed in its turn leaves the turn to the next.
        let _turn = shared.turn.lock().unwrap_or_else(|e| e.into_inner());
        crate::traffic::table_shown();
        let mine = mesh.turn();
        let ended = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            shared.runtime.block_on(async {
                let mut report = PanicReport(Some(mine.reporter()));
                let output = body(mine).await;
                report.0 = None;
                output
            })
        }));
        shared.runtime.block_on(mesh.end_turn());
        match ended {
            Ok(output) => output,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// Prints the mesh's logs and traffic if dropped while panicking.
    struct PanicReport(Option<crate::mesh::Reporter>);

    impl Drop for PanicReport {
        fn drop(&mut self) {
            if std::thread::panicking()
                && let Some(report) = self.0.take()
            {
                eprintln!("{}", report.report());
            }
        }
    }
}
