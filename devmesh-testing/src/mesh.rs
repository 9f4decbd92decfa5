//! A mesh of a test's own, on `cargo_devmesh::Mesh`.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use cargo_devmesh::build::{Builder, Built};
use cargo_devmesh::inspector::{Filter, Inspector};
use cargo_devmesh::logs::Logs;
use cargo_devmesh::workspace::{CargoOptions, Shape, Workspace};
use cargo_devmesh::{Faults, Plan};
use devmesh::registry::Status;
use tokio_util::sync::CancellationToken;

use crate::captured::{self, Answer, Captured};
use crate::fault::Fault;
use crate::handler::{self, Handler};
use crate::traffic::{Call, Traffic};

/// Why a mesh did not start, or a service did not do what it was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("the workspace at `{path}`: {detail}")]
    Workspace { path: PathBuf, detail: String },
    #[error("`{name}` is no service of the mesh (hint: it has {known})")]
    UnknownService { name: String, known: String },
    #[error("`{name}` is both run and replaced by `remote`/`handler`; it can be only one")]
    RunAndReplaced { name: String },
    #[error("the services could not be built: {0}")]
    Build(String),
    #[error("the mesh did not start: {0}")]
    Start(String),
    #[error("`{name}` did not become ready: it is {status}\n{logs}")]
    NotReady { name: String, status: String, logs: String },
    #[error("`{name}`: {detail}")]
    Service { name: String, detail: String },
    #[error("`{name}` did not answer: {detail}")]
    Send { name: String, detail: String },
    #[error("the handler for `{name}` could not listen: {source}")]
    Handler { name: String, source: std::io::Error },
}

/// A running mesh: the services a test named, ready, each behind a front
/// port of this mesh's own. Dropped, it ends every process (a shared
/// one's, once the test process ends).
#[derive(Debug)]
pub struct Mesh {
    running: Arc<Running>,
    /// What this test sees of the traffic and the logs: exchanges after
    /// this id, lines after this one (a shared mesh's earlier tests had
    /// those before).
    since: u64,
    lines_since: u64,
}

#[derive(Debug)]
struct Running {
    inner: cargo_devmesh::Mesh,
    /// Services run here, and those used at a URL or a handler.
    run: Vec<String>,
    replaced: Vec<String>,
    faults: Mutex<BTreeMap<String, Faults>>,
    /// Stops the handlers' servers.
    handlers: Handlers,
    /// The state folder (registry, ports, logs); removed last.
    _state: tempfile::TempDir,
}

/// How a mesh is started: [`Mesh::builder`], or `#[devmesh::test(…)]`.
#[derive(Debug)]
pub struct MeshBuilder {
    manifest: PathBuf,
    services: Vec<String>,
    remotes: BTreeMap<String, Remote>,
    env: Vec<(String, String, String)>,
    release: bool,
}

enum Remote {
    Url(String),
    Handler(Handler),
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Remote::Url(url) => write!(f, "Url({url})"),
            Remote::Handler(_) => f.write_str("Handler"),
        }
    }
}

impl Mesh {
    /// A builder for the workspace of the package being tested (its
    /// `CARGO_MANIFEST_DIR`, which cargo and nextest set).
    pub fn builder() -> MeshBuilder {
        let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".to_owned());
        MeshBuilder::in_package(&dir)
    }

    /// The base URL of service `name`'s front port, `http://127.0.0.1:PORT`.
    ///
    /// # Panics
    /// When the mesh has no service `name`: a test's own mistake, said with
    /// the services it has.
    #[track_caller]
    pub fn url(&self, name: &str) -> String {
        format!("http://{}", self.addr(name))
    }

    /// The address of service `name`'s front port (see [`Mesh::url`]).
    #[track_caller]
    pub fn addr(&self, name: &str) -> SocketAddr {
        match self.running.inner.front(name) {
            Some(addr) => addr,
            None => panic!("devmesh: {}", self.unknown(name)),
        }
    }

    /// The process id of service `name`'s running instance (to stop it
    /// with SIGSTOP and see how its callers cope, say).
    pub fn pid(&self, name: &str) -> Option<u32> {
        let handle = self.running.inner.services().get(name).ok()?;
        handle.state.borrow().pid
    }

    /// Everything service `name` printed, stdout and stderr, a line each
    /// (`devmesh`: what the mesh itself said).
    ///
    /// # Panics
    /// When the mesh runs no service `name`.
    #[track_caller]
    pub fn logs(&self, name: &str) -> String {
        if name != "devmesh" && !self.running.run.iter().any(|n| n == name) {
            panic!("devmesh: {}", self.unknown(name));
        }
        self.log_text(name)
    }

    fn log_text(&self, name: &str) -> String {
        std::fs::read_to_string(Logs::path(self.running.inner.state_dir(), name)).unwrap_or_default()
    }

    /// Waits until service `name` prints a line that contains `text` (or
    /// has printed one); an error with what it printed after 10 s.
    pub async fn wait_log(&self, name: &str, text: &str) -> Result<(), Error> {
        if name != "devmesh" && !self.running.run.iter().any(|n| n == name) {
            return Err(self.unknown(name));
        }
        let mut lines = self.running.inner.logs().subscribe();
        if self.log_text(name).contains(text) {
            return Ok(());
        }
        let found = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match lines.recv().await {
                    Ok(line) if line.service == name && line.text.contains(text) => return true,
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return false,
                }
            }
        })
        .await;
        match found {
            Ok(true) => Ok(()),
            _ if self.log_text(name).contains(text) => Ok(()),
            _ => Err(Error::Service {
                name: name.to_owned(),
                detail: format!(
                    "printed no line with `{text}` within 10 s; its last lines:\n{}",
                    tail(&self.log_text(name), 20)
                ),
            }),
        }
    }

    /// Restarts service `name` (blue/green: its front port keeps taking
    /// requests), and waits until the new instance is ready.
    pub async fn restart(&self, name: &str) -> Result<(), Error> {
        self.act(name, self.running.inner.restart(name, false, false)).await?;
        self.ready(name).await
    }

    /// Stops service `name`: its callers get a 503 from its front port
    /// that says it is stopped, until [`Mesh::start_service`].
    pub async fn stop(&self, name: &str) -> Result<(), Error> {
        self.act(name, self.running.inner.stop(name)).await
    }

    /// Starts service `name` again after [`Mesh::stop`], and waits until
    /// it is ready.
    pub async fn start_service(&self, name: &str) -> Result<(), Error> {
        self.act(name, self.running.inner.start_service(name)).await?;
        self.ready(name).await
    }

    /// What went between the services (and from the test to them) so far,
    /// once the exchanges in flight have ended (or after a second).
    pub async fn traffic(&self) -> Traffic {
        let store = &self.running.inner.inspector().store;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        loop {
            let exchanges = store.list(&self.scope());
            if exchanges.iter().all(|e| e.complete) || tokio::time::Instant::now() >= deadline {
                let calls = exchanges.iter().map(Call::from).collect();
                return Traffic::new(
                    calls,
                    self.running.run.iter().chain(&self.running.replaced).cloned().collect(),
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Sends `request` to service `name`'s front port as a caller from
    /// outside the mesh does (`external` in its traffic), on a connection
    /// of its own: HTTP/2 without TLS when the request's version is
    /// `HTTP_2` (gRPC), else HTTP/1.1. Its URI is a path and query.
    ///
    /// # Panics
    /// When the mesh has no service `name`.
    pub async fn send(&self, name: &str, request: hyper::Request<hyper::body::Bytes>) -> Result<Answer, Error> {
        let addr = self.addr(name);
        captured::send(addr, request).await.map_err(|detail| Error::Send {
            name: name.to_owned(),
            detail,
        })
    }

    /// Adds `fault` to those on service `name`'s front port: from the next
    /// request on, its callers meet it (see [`Fault`]).
    ///
    /// # Panics
    /// When the mesh has no service `name`.
    #[track_caller]
    pub fn fault(&self, name: &str, fault: Fault) {
        self.set_faults(name, |faults| fault.apply(faults));
    }

    /// Takes every fault off service `name`'s front port.
    #[track_caller]
    pub fn clear_faults(&self, name: &str) {
        self.set_faults(name, |faults| *faults = Faults::default());
    }

    /// Ends every service gracefully (SIGTERM, then the grace period),
    /// rather than at once as a drop does. A shared mesh is the other
    /// tests' too: it ends with the test process.
    pub async fn shutdown(self) -> Result<(), Error> {
        let running = Arc::try_unwrap(self.running)
            .map_err(|_| Error::Start("a shared mesh ends with the test process, not with one test".to_owned()))?;
        running.handlers.0.cancel();
        running.inner.shutdown().await.map_err(|e| Error::Start(e.to_string()))
    }

    #[track_caller]
    fn set_faults(&self, name: &str, change: impl FnOnce(&mut Faults)) {
        if self.running.inner.front(name).is_none() {
            panic!("devmesh: {}", self.unknown(name));
        }
        let mut all = self.running.faults.lock().unwrap_or_else(|e| e.into_inner());
        let faults = all.entry(name.to_owned()).or_default();
        change(faults);
        let _known = self.running.inner.set_faults(name, faults.clone());
    }

    async fn act(
        &self,
        name: &str,
        action: impl std::future::Future<Output = anyhow::Result<cargo_devmesh::supervisor::Outcome>>,
    ) -> Result<(), Error> {
        if !self.running.run.iter().any(|n| n == name) {
            return Err(self.unknown(name));
        }
        match action.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(refused)) => Err(Error::Service {
                name: name.to_owned(),
                detail: refused.to_string(),
            }),
            Err(e) => Err(Error::Service {
                name: name.to_owned(),
                detail: e.to_string(),
            }),
        }
    }

    async fn ready(&self, name: &str) -> Result<(), Error> {
        let state = self.running.inner.ready(name).await.map_err(|e| Error::Service {
            name: name.to_owned(),
            detail: e.to_string(),
        })?;
        if state.status == Status::Ready {
            return Ok(());
        }
        Err(Error::NotReady {
            name: name.to_owned(),
            status: format!("{:?}", state.status).to_lowercase(),
            logs: tail(&self.log_text(name), 20),
        })
    }

    fn unknown(&self, name: &str) -> Error {
        let known: Vec<&str> = self
            .running
            .run
            .iter()
            .chain(&self.running.replaced)
            .map(String::as_str)
            .collect();
        Error::UnknownService {
            name: name.to_owned(),
            known: known.join(", "),
        }
    }

    /// What a failed test is told of this mesh.
    pub(crate) fn reporter(&self) -> Reporter {
        Reporter {
            logs: self.running.inner.logs().clone(),
            inspector: Arc::clone(self.running.inner.inspector()),
            scope: self.scope(),
            lines_since: self.lines_since,
        }
    }

    /// This test's exchanges.
    fn scope(&self) -> Filter {
        Filter {
            after: Some(self.since),
            ..Filter::default()
        }
    }

    /// Another test's turn on this mesh (see `__private::run_shared`): it
    /// sees the traffic from now on.
    pub(crate) fn turn(&self) -> Mesh {
        let newest = self.running.inner.inspector().store.list(&Filter {
            limit: Some(1),
            ..Filter::default()
        });
        let newest_line = self.running.inner.logs().recent(&[], None, 0, 1);
        Mesh {
            running: Arc::clone(&self.running),
            since: newest.last().map_or(0, |e| e.id),
            lines_since: newest_line.last().map_or(0, |l| l.seq),
        }
    }

    /// Puts back what a test's turn changed: no faults, and every service
    /// it stopped started again.
    pub(crate) async fn end_turn(&self) {
        let faulted: Vec<String> = self
            .running
            .faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        for name in faulted {
            self.clear_faults(&name);
        }
        for name in self.running.run.clone() {
            let stopped = self
                .running
                .inner
                .services()
                .get(&name)
                .is_ok_and(|handle| handle.state.borrow().status == Status::Stopped);
            if stopped && let Err(e) = self.start_service(&name).await {
                // The next test would meet it stopped: said where it shows.
                eprintln!("devmesh: `{name}`, stopped by a test of a shared mesh, did not start again: {e}");
            }
        }
    }
}

/// What a failed test is told: each service's last lines, and the traffic.
#[derive(Debug)]
pub(crate) struct Reporter {
    logs: Logs,
    inspector: Arc<Inspector>,
    scope: Filter,
    lines_since: u64,
}

impl Reporter {
    pub(crate) fn report(&self) -> String {
        let lines = self.logs.recent(&[], None, self.lines_since, 40);
        let mut report = String::from("\n--- devmesh: the mesh's last log lines ---\n");
        for line in lines {
            report.push_str(&format!("{:>10} | {}\n", line.service, line.text));
        }
        let calls: Vec<Call> = self.inspector.store.list(&self.scope).iter().map(Call::from).collect();
        if crate::traffic::table_shown() {
            report.push_str("--- devmesh: the traffic: in the assertion's message above ---\n");
        } else {
            report.push_str("--- devmesh: the traffic ---\n");
            report.push_str(&crate::traffic::table(&calls));
        }
        report
    }
}

impl MeshBuilder {
    /// A builder for the workspace that holds the package at `dir`.
    pub fn in_package(dir: &str) -> MeshBuilder {
        MeshBuilder {
            manifest: Path::new(dir).join("Cargo.toml"),
            services: Vec::new(),
            remotes: BTreeMap::new(),
            env: Vec::new(),
            release: false,
        }
    }

    /// Another workspace: its `Cargo.toml` (relative to the package).
    pub fn workspace(mut self, manifest: impl AsRef<Path>) -> MeshBuilder {
        let dir = self.manifest.parent().map(Path::to_path_buf).unwrap_or_default();
        self.manifest = dir.join(manifest);
        self
    }

    /// Runs these services, and those they depend on (`depends_on` in
    /// `devmesh.toml`); all of the workspace's when none are named.
    pub fn services<S: Into<String>>(mut self, names: impl IntoIterator<Item = S>) -> MeshBuilder {
        self.services.extend(names.into_iter().map(Into::into));
        self
    }

    /// Uses service `name` at `url` instead of running it: its callers
    /// reach it through a front port of its own, so its traffic is seen.
    pub fn remote(mut self, name: impl Into<String>, url: impl Into<String>) -> MeshBuilder {
        self.remotes.insert(name.into(), Remote::Url(url.into()));
        self
    }

    /// Service `name` is `service`, served in the test: an axum `Router`,
    /// or any tower service of hyper requests.
    pub fn handler<S, B>(mut self, name: impl Into<String>, service: S) -> MeshBuilder
    where
        S: tower_service::Service<hyper::Request<hyper::body::Incoming>, Response = hyper::Response<B>>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.remotes
            .insert(name.into(), Remote::Handler(handler::tower(service)));
        self
    }

    /// Service `name` answers each request with what `answer` returns for
    /// it (the request with its whole body): a `&str`, a `String`, a
    /// `(status, body)`, a `serde_json::Value`, or a `hyper::Response`.
    pub fn handler_fn<F, Fut, R>(mut self, name: impl Into<String>, answer: F) -> MeshBuilder
    where
        F: Fn(hyper::Request<hyper::body::Bytes>) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = R> + Send + 'static,
        R: crate::Reply,
    {
        self.remotes
            .insert(name.into(), Remote::Handler(handler::function(answer)));
        self
    }

    /// Service `name` answers as it was captured: each request gets the
    /// next of `answers` to its method and path (see [`Captured`]).
    pub fn stand_in(mut self, name: impl Into<String>, answers: impl IntoIterator<Item = Captured>) -> MeshBuilder {
        let name = name.into();
        let handler = captured::stand_in(name.clone(), answers.into_iter().collect());
        self.remotes.insert(name, Remote::Handler(handler));
        self
    }

    /// Sets `key=value` in service `name`'s environment.
    pub fn env(mut self, name: impl Into<String>, key: impl Into<String>, value: impl Into<String>) -> MeshBuilder {
        self.env.push((name.into(), key.into(), value.into()));
        self
    }

    /// `setup(self)`: a function that sets the rest, for
    /// `#[devmesh::test(setup(function))]`.
    pub fn setup(self, setup: impl FnOnce(MeshBuilder) -> MeshBuilder) -> MeshBuilder {
        setup(self)
    }

    /// Runs release builds of the services.
    pub fn release(mut self) -> MeshBuilder {
        self.release = true;
        self
    }

    /// Builds the services (once per test process), binds every front
    /// port, starts the services and waits until each is ready.
    pub async fn start(self) -> Result<Mesh, Error> {
        let MeshBuilder {
            manifest,
            services,
            remotes,
            env,
            release,
        } = self;
        let cargo = CargoOptions {
            manifest_path: Some(manifest.clone()),
            release,
            ..CargoOptions::default()
        };
        let (mut workspace, built) = prepare_once(&cargo).await?;
        let state = tempfile::tempdir().map_err(|e| Error::Start(e.to_string()))?;
        workspace.state_dir = state.path().to_path_buf();
        // What is remote is the test's to say: not the team's sandbox.
        let config = &mut workspace.config;
        config.remote.static_map.clear();
        config.remote.dns = None;
        config.remote.etcd = None;
        config.tunnel = None;
        for service in config.services.values_mut() {
            service.share = false;
            service.expose = false;
        }
        // Stopped if the mesh does not start, and with it if it does.
        let handlers = Handlers(CancellationToken::new());
        let replaced: Vec<String> = remotes.keys().cloned().collect();
        for (name, remote) in remotes {
            if services.contains(&name) {
                return Err(Error::RunAndReplaced { name });
            }
            let url = match remote {
                Remote::Url(url) => url,
                Remote::Handler(handler) => {
                    let addr = handler::serve(handler, handlers.0.clone())
                        .await
                        .map_err(|source| Error::Handler {
                            name: name.clone(),
                            source,
                        })?;
                    format!("http://{addr}")
                }
            };
            workspace.config.remote.static_map.insert(name.clone(), url);
            workspace.services.remove(&name);
        }
        for spec in workspace.services.values_mut() {
            spec.depends_on.retain(|d| !replaced.contains(d));
        }
        for (name, key, value) in env {
            match workspace.services.get_mut(&name) {
                Some(spec) => drop(spec.env.insert(key, value)),
                None => {
                    return Err(Error::UnknownService {
                        name,
                        known: workspace.services.keys().cloned().collect::<Vec<_>>().join(", "),
                    });
                }
            }
        }
        let run = workspace
            .select(&services, &[])
            .map_err(|e| Error::Start(e.to_string()))?;
        let plan = Plan {
            services,
            cargo,
            isolated: true,
            prebuilt: Some(built),
            start_together: true,
            ..Plan::new(workspace)
        };
        let inner = cargo_devmesh::Mesh::start(plan)
            .await
            .map_err(|e| Error::Start(format!("{e:#}")))?;
        let mesh = Mesh {
            running: Arc::new(Running {
                inner,
                run,
                replaced,
                faults: Mutex::default(),
                handlers,
                _state: state,
            }),
            since: 0,
            lines_since: 0,
        };
        for name in &mesh.running.run {
            mesh.ready(name).await?;
        }
        Ok(mesh)
    }
}

/// The handlers' servers, stopped with the mesh.
#[derive(Debug)]
struct Handlers(CancellationToken);

impl Drop for Handlers {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// The workspace (read with `cargo metadata`) and its service binaries
/// (built), once per test process for each workspace and build flags,
/// shared by every mesh of it.
async fn prepare_once(cargo: &CargoOptions) -> Result<(Workspace, Arc<Built>), Error> {
    type Key = (Option<PathBuf>, Vec<String>);
    type Prepared = (Workspace, Arc<Built>);
    static PREPARED: LazyLock<tokio::sync::Mutex<HashMap<Key, Prepared>>> = LazyLock::new(Default::default);
    let key = (cargo.manifest_path.clone(), cargo.build_flags());
    // Held while preparing: the other tests of the process wait for it.
    let mut prepared = PREPARED.lock().await;
    if let Some((workspace, built)) = prepared.get(&key) {
        return Ok((workspace.clone(), Arc::clone(built)));
    }
    // Kept by an earlier test process, while the workspace is as it was.
    let file = crate::kept::file(&key);
    let kept = file.as_deref().and_then(crate::kept::Kept::read);
    let mut kept = match kept {
        Some(kept) => kept,
        None => {
            let manifest = cargo.manifest_path.clone();
            let shape = tokio::task::spawn_blocking(move || Shape::read(manifest.as_deref()))
                .await
                .map_err(|e| Error::Start(e.to_string()))?
                .map_err(|e| Error::Workspace {
                    path: key.0.clone().unwrap_or_default(),
                    detail: e.to_string(),
                })?;
            crate::kept::Kept::new(shape)
        }
    };
    let workspace = Workspace::of(kept.shape.clone()).map_err(|e| Error::Workspace {
        path: key.0.clone().unwrap_or_default(),
        detail: e.to_string(),
    })?;
    let targets: Vec<_> = workspace.services.values().filter_map(|s| s.bin_target()).collect();
    let built = match kept.built(&key.1, &targets) {
        Some(built) => built,
        None => {
            let began = std::time::SystemTime::now();
            // Quiet: the output of a test is the test's; cargo's shows only when a build fails.
            let builder = Builder::new(workspace.manifest_path.clone(), key.1.clone(), targets.clone()).quiet();
            let built = builder
                .build()
                .await
                .map_err(|e| Error::Build(format!("`cargo build`: {e}")))?;
            let failed: Vec<String> = targets
                .iter()
                .filter(|t| !built.binaries.contains_key(t))
                .map(|t| format!("`{}` of `{}`", t.bin, t.package))
                .collect();
            if !failed.is_empty() {
                return Err(Error::Build(format!(
                    "{} did not build; cargo said:\n{}",
                    failed.join(", "),
                    built.output.trim_end()
                )));
            }
            kept.keep_build(&key.1, began, &built);
            if let Some(file) = &file {
                kept.write(file);
            }
            built
        }
    };
    let built = Arc::new(built);
    prepared.insert(key, (workspace.clone(), Arc::clone(&built)));
    Ok((workspace, built))
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
