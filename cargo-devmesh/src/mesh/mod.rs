//! The running mesh, with one owner: the composition root, and the only
//! module that knows every part. [`Mesh::start`] takes a [`Plan`], holds
//! the front ports, starts the inspector, a task per service, the proxy's
//! threads and the local API, and starts the first build; [`Mesh::shutdown`]
//! stops all of it, and dropping a mesh ends every service process too.
//!
//! It has no terminal: the `cargo devmesh` binary turns arguments into a
//! plan and prints; a test drives the same type.
//!
//! ```text
//!   Plan ─▶ Mesh::start
//!            ├─ PortBook ─▶ front listeners ─▶ proxy threads ──┐ route (watch)
//!            ├─ Inspector ◀── captures ─────────────┘          │
//!            ├─ Supervisor ─▶ a task per service ─▶ processes ◀┘
//!            │                     └─ ServiceHandle ◀── control (API), watch, you
//!            ├─ StateFiles: registry.json, ports.json, control.json
//!            └─ Logs: terminal (if asked), files, the page
//! ```
//!
//! A request: client → front port (proxy thread) → the route of its
//! service → the ready instance; captured into the inspector on the way.
//! A restart: handle → service task → new instance ready → route switched →
//! old instance drained and stopped.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use devmesh::config::Mode;
use devmesh::registry::{Entry, Status};
use tokio_util::sync::CancellationToken;

use crate::build::{BinTarget, Builder, Built};
use crate::control;
use crate::errors::StartError;
use crate::inspector::Inspector;
use crate::logs::{Echo, Logs};
use crate::ports::PortBook;
use crate::proxy::switch::ModeRefused;
use crate::proxy::{self, Backend, Front, Switch, Switches, Traffic};
use crate::state::StateFiles;
use crate::supervisor::{self, Outcome, ServiceHandle, ServiceState, Services, Supervisor};
use crate::workspace::{CargoOptions, Workspace};

mod remotes;

pub use remotes::Backends;
use remotes::{bridge_tls, follow_remotes, remote_copies};

/// What to run: a workspace, which of its services, and how.
#[derive(Debug)]
pub struct Plan {
    pub workspace: Workspace,
    /// Services by name; with `packages`, empty means all of them.
    pub services: Vec<String>,
    /// Services by the package they are built from.
    pub packages: Vec<String>,
    pub cargo: CargoOptions,
    /// Rebuild and restart what changes (`--watch`).
    pub watch: bool,
    /// Where service output and the mesh's notes go besides the log files.
    pub echo: Echo,
    /// A mesh of its own beside others of the same workspace (a test's):
    /// every port a new one from the kernel, kept in no book, and no lock
    /// on the workspace. Its `state_dir` must be its own too.
    pub isolated: bool,
    /// The services' binaries, built already: no `cargo build` at start.
    pub prebuilt: Option<Arc<Built>>,
    /// Start every service at once rather than each after those it
    /// `depends_on` are ready. Callers see the same order either way (a
    /// front port holds a request until its service is ready); a test's
    /// mesh is up sooner.
    pub start_together: bool,
}

impl Plan {
    /// Every service of `workspace`, built as a debug build, written only
    /// to the log files.
    pub fn new(workspace: Workspace) -> Plan {
        Plan {
            cargo: CargoOptions {
                manifest_path: Some(workspace.manifest_path.clone()),
                ..CargoOptions::default()
            },
            workspace,
            services: Vec::new(),
            packages: Vec::new(),
            watch: false,
            echo: Echo::Off,
            isolated: false,
            prebuilt: None,
            start_together: false,
        }
    }
}

/// How long no request may have been routed here before a stopping
/// supervisor takes its tunnel down: the sandbox has stopped sending.
const ROUTED_QUIET: std::time::Duration = std::time::Duration::from_millis(250);

/// A running mesh. Shut it down with [`Mesh::shutdown`]; dropped, it ends
/// every service process at once (SIGTERM, then SIGKILL after the grace
/// period) and clears its registry entries.
#[derive(Debug)]
pub struct Mesh {
    state_dir: PathBuf,
    services: Arc<Services>,
    /// Every front port: of a service run here, or used from the sandbox.
    switches: Arc<Switches>,
    inspector: Arc<Inspector>,
    logs: Logs,
    state: StateFiles,
    supervisor: Arc<Supervisor>,
    api: control::Serving,
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    proxy_workers: Vec<std::thread::JoinHandle<()>>,
    /// The services shared in etcd, while they are.
    sharing: Option<crate::share::Sharing>,
    /// Developers' copies, and whether this supervisor's are leaving.
    routed: Arc<proxy::RoutedCopies>,
    /// Whether services here are routed: at a stop, the sandbox may still
    /// send their route's requests for a moment.
    routes_here: bool,
    /// What each front port does to requests besides forwarding them.
    faults: BTreeMap<String, proxy::FaultSetter>,
    /// Held while the mesh runs: a second one for the workspace is refused
    /// (unless it is isolated).
    _workspace_lock: Option<std::fs::File>,
    stopped: bool,
}

impl Mesh {
    /// Starts the services of `plan` (in a tokio runtime). The front ports,
    /// the inspector and the API are up when this returns; the services
    /// are building and starting: wait with [`Mesh::ready`].
    ///
    /// A program whose only use of devmesh is this mesh spawns services
    /// faster when it calls [`supervisor::process::reserve_listen_fd`]
    /// first thing in `main`, as `cargo devmesh` does; a test need not.
    pub async fn start(plan: Plan) -> anyhow::Result<Mesh> {
        let Plan {
            workspace,
            services,
            packages,
            cargo,
            watch,
            echo,
            isolated,
            prebuilt,
            start_together,
        } = plan;
        let state_dir = workspace.state_dir.clone();
        control::ensure_not_running(&state_dir)?;
        let workspace_lock = match isolated {
            true => None,
            false => Some(lock_workspace(&workspace.root)?),
        };
        // The token, logs and registry: the user's alone.
        crate::secret::private_dir(&state_dir).map_err(|source| StartError::File {
            action: "create",
            path: state_dir.clone(),
            source,
        })?;
        let selected = workspace.select(&services, &packages)?;
        if selected.is_empty() {
            anyhow::bail!(
                "the workspace at `{}` has no services (hint: a service is a binary that depends on \
                 `devmesh`, or a `[services.NAME]` with a `command` in `devmesh.toml`)",
                workspace.root.display()
            );
        }

        let remotes::Found {
            copies: remotes,
            backends,
            etcd,
            problems: remote_problems,
        } = remote_copies(&workspace).await;
        // Services used from the sandbox only get a front port too.
        let remote_only: Vec<String> = remotes.keys().filter(|n| !selected.contains(n)).cloned().collect();

        let mut ports = match isolated {
            true => PortBook::ephemeral(&state_dir),
            false => PortBook::open(&state_dir, &workspace.root)?,
        };
        let mut listeners = BTreeMap::new();
        for name in selected.iter().chain(&remote_only) {
            let configured = workspace.services.get(name).and_then(|spec| spec.port);
            let listener = ports.bind(name, configured, workspace.config.run.ports)?;
            listeners.insert(name.clone(), listener);
        }
        let inspector_listener = ports.bind_inspector(workspace.config.run.ports)?;
        let dns_socket = ports.bind_dns(workspace.config.run.ports)?;
        let otlp_listener = ports.bind_otlp(workspace.config.run.ports)?;
        ports.commit();
        let fronts: BTreeMap<String, SocketAddr> = listeners
            .iter()
            .map(|(name, l)| Ok((name.clone(), l.local_addr()?)))
            .collect::<std::io::Result<_>>()?;

        let logs = Logs::new(&state_dir, &selected, workspace.config.logs.clone(), echo)
            .context("could not create the log folder")?;
        for problem in remote_problems {
            logs.note(problem);
        }
        let (state, ports) = state_files(&state_dir, &fronts, &remote_only, ports)?;

        let targets: Vec<BinTarget> = selected
            .iter()
            .filter_map(|name| workspace.services[name].bin_target())
            .collect();
        let builder = Builder::new(workspace.manifest_path.clone(), cargo.build_flags(), targets);
        let (first_build, first_build_rx) = tokio::sync::watch::channel(None);

        let proxy_threads = proxy::threads();
        // Captured traffic and services' own spans share `inspector.memory`:
        // three quarters and one.
        let mut inspector_config = workspace.config.inspector.clone();
        let spans_budget = inspector_config.memory / 4;
        inspector_config.memory -= spans_budget;
        let inspector = Arc::new(
            Inspector::new(inspector_config, proxy_threads).context("could not start the inspector's thread")?,
        );
        let supervisor = Arc::new(Supervisor {
            callers: Arc::clone(&inspector.callers),
            spawner: supervisor::process::Spawner::start(workspace.config.run.grace_period)
                .context("could not start the watchdog that ends services if the supervisor dies")?,
            logs: logs.clone(),
            builder: Arc::new(builder),
            registry: Arc::clone(state.registry()),
            config_path: workspace.config_path.is_file().then(|| workspace.config_path.clone()),
            fronts: fronts.clone(),
            grace: workspace.config.run.grace_period,
            drain: workspace.config.run.drain_timeout,
            dns: dns_socket.local_addr().ok(),
            otlp: otlp_listener.local_addr().ok(),
        });
        let telemetry = Arc::new(crate::telemetry::Telemetry::new(logs.clone(), spans_budget));
        let shutdown = CancellationToken::new();
        let mut remotes = bridge_tls(remotes, &workspace, &logs, &shutdown).await;
        // The tunnel's link, once it has one: bridges to the sandbox use it.
        let (live_link, live) = tokio::sync::watch::channel(None);
        for (name, remote) in remotes.iter_mut() {
            let Some(target) = remote.through.clone() else { continue };
            match crate::tunnel::client::reach(target, live.clone(), &logs, shutdown.clone()).await {
                Ok(addr) => {
                    let host = remote.copy.backend.host.as_deref().unwrap_or_default().to_owned();
                    remote.copy.backend = Backend::remote(addr, &host);
                }
                Err(e) => logs.note(format!("{name}: no bridge to the relay: {e}")),
            }
        }
        let mut handles = Services::default();
        let switches = Arc::new(Switches::default());
        let mut tasks = Vec::new();
        let mut fronts_to_serve = Vec::new();
        let timeouts = proxy::Timeouts::new(
            workspace.config.run.ready_timeout,
            workspace.config.run.response_timeout,
        );
        let mut fault_setters = BTreeMap::new();
        // Developers' copies of the services here, for the requests with their route.
        let routed = Arc::new(proxy::RoutedCopies::default());
        // This developer's routed services, and the route their requests carry.
        let routes: Vec<(String, String)> = selected
            .iter()
            .filter_map(|name| {
                let spec = workspace.config.services.get(name)?;
                let route = spec.route_name(workspace.config.tunnel.as_ref())?;
                Some((name.clone(), route.to_owned()))
            })
            .collect();
        let developer_route: Option<Arc<str>> = routes.first().map(|(_, route)| Arc::from(route.as_str()));
        // Shared for everyone: those marked `share` that no route keeps to
        // this developer (a routed one is put under its route instead).
        let shared_names: Vec<String> = selected
            .iter()
            .filter(|name| workspace.config.services.get(*name).is_some_and(|s| s.share))
            .filter(|name| !routes.iter().any(|(service, _)| service == *name))
            .cloned()
            .collect();
        let mut front = |service: &str, route, protocol| Front {
            faults: {
                let (set, faults) = proxy::FaultState::new();
                fault_setters.insert(service.to_owned(), set);
                faults
            },
            service: service.to_owned(),
            listener: listeners
                .remove(service)
                .expect("every service served has a front port"),
            route,
            protocol,
            timeouts,
            max_connections: proxy::MAX_CONNECTIONS,
            inspector: Arc::clone(&inspector),
            routed: Arc::clone(&routed),
            developer_route: developer_route.clone(),
        };
        for name in workspace.start_order(&selected) {
            let mut spec = workspace.services[&name].clone();
            let remote = remotes.get(&name).map(|r| r.copy.clone());
            if spec.mode == Mode::Remote && remote.is_none() {
                logs.note(format!(
                    "{name}: its mode is `remote`, but no backend knows it in the sandbox; it runs here \
                     (hint: add it to `[remote.static]` in devmesh.toml)"
                ));
                spec.mode = Mode::Auto;
            }
            let (mode, protocol) = (spec.mode, spec.protocol);
            let dependencies = spec
                .depends_on
                .iter()
                .filter(|_| !start_together)
                .map(|d| Ok(handles.get(d)?.state.clone()))
                .collect::<Result<_, crate::errors::PlanError>>()?;
            let (switch, route, local) = Switch::start(true, remote, mode);
            let local = local.expect("a copy here has a route here");
            let (handle, task) = supervisor::service::spawn(
                spec,
                first_build_rx.clone(),
                (fronts[&name], local),
                dependencies,
                Arc::clone(&supervisor),
                shutdown.clone(),
            );
            fronts_to_serve.push((front(&name, route, protocol), shutdown.clone()));
            switches.insert(name.clone(), fronts[&name], switch);
            handles.insert(name, handle);
            tasks.push(task);
        }
        // Those an etcd key places go when the key does.
        let mut keyed = BTreeMap::new();
        for name in &remote_only {
            let remote = remotes[name].clone();
            let protocol = remote.protocol;
            let (switch, route, _) = Switch::start(false, Some(remote.copy), Mode::Remote);
            let stop = match remote.followed.is_some() && remote.followed == etcd {
                true => keyed
                    .entry(name.clone())
                    .or_insert_with(|| shutdown.child_token())
                    .clone(),
                false => shutdown.clone(),
            };
            fronts_to_serve.push((front(name, route, protocol), stop));
            switches.insert(name.clone(), fronts[name], switch);
        }
        let say = crate::accept::in_log(&logs);
        let (proxy, proxy_workers) = proxy::start(proxy_threads, Arc::clone(&say), shutdown.clone())
            .context("could not start the proxy's threads")?;
        // The tunnel hands the calls it carries in to the front ports' doors.
        let mut doors = BTreeMap::new();
        for (front, stop) in fronts_to_serve {
            let service = front.service.clone();
            let door = proxy.serve(front, stop).context("could not serve a front port")?;
            doors.insert(service, door);
        }
        // Built already: the services start now, while the rest comes up.
        if let Some(built) = prebuilt.clone() {
            first_build.send_replace(Some(built));
        }
        let services = Arc::new(handles);
        let following = remotes::Following {
            moving: remotes
                .iter()
                .filter(|(_, r)| r.tls.is_none())
                .filter_map(|(name, r)| Some((name.clone(), r.followed?)))
                .collect(),
            keyed,
            backends: Arc::clone(&backends),
            etcd,
            switches: Arc::clone(&switches),
            new_fronts: remotes::NewFronts {
                proxy,
                ports,
                range: workspace.config.run.ports,
                state: state.clone(),
                timeouts,
                inspector: Arc::clone(&inspector),
                reach: workspace.config.tunnel.iter().flat_map(|t| t.reach.clone()).collect(),
                routed: Arc::clone(&routed),
                developer_route: developer_route.clone(),
            },
            logs: logs.clone(),
        };
        tasks.push(tokio::spawn(follow_remotes(following, shutdown.clone())));
        // What the tunnel is doing, for `ps` and the page.
        let tunnel_state = tokio::sync::watch::Sender::new(crate::tunnel::client::TunnelState {
            reached: remotes
                .iter()
                .filter(|(_, r)| r.through.is_some())
                .map(|(name, _)| name.clone())
                .collect(),
            ..Default::default()
        });
        let parts = control::Parts {
            tunnel: tunnel_state.subscribe(),
            services: Arc::clone(&services),
            switches: Arc::clone(&switches),
            backends,
            routed: Arc::clone(&routed),
            routes: control::RoutesView {
                copies: Vec::new(),
                own: routes.clone(),
                shared: shared_names.clone(),
            },
            inspector: Arc::clone(&inspector),
            logs: logs.clone(),
            telemetry: Arc::clone(&telemetry),
            otlp: supervisor.otlp,
            members: Arc::new(crate::as_test::members(&workspace)),
        };
        let api = control::serve(&state, &state_dir, inspector_listener, parts, shutdown.clone()).await?;
        tasks.push(tokio::spawn(state.clone().guard(logs.clone(), shutdown.clone())));
        let clock_logs = logs.clone();
        tasks.push(tokio::spawn(crate::time::watch_clock(
            move |jump| clock_logs.note(jump),
            shutdown.clone(),
        )));
        let dns_socket = dns_socket
            .set_nonblocking(true)
            .and_then(|()| tokio::net::UdpSocket::from_std(dns_socket))
            .context("could not serve DNS")?;
        tasks.push(tokio::spawn(crate::dns::serve(
            dns_socket,
            Arc::clone(&switches),
            say,
            shutdown.clone(),
        )));
        let otlp_listener = otlp_listener
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpListener::from_std(otlp_listener))
            .context("could not serve OTLP")?;
        tasks.push(tokio::spawn(crate::telemetry::serve(
            otlp_listener,
            telemetry,
            shutdown.clone(),
        )));
        // Commands and the front ports are up while the services build.
        if prebuilt.is_none() {
            let building = Arc::clone(&supervisor);
            tasks.push(tokio::spawn(async move {
                first_build.send_replace(Some(Arc::new(build_all(&building).await)));
            }));
        }
        let shared: Vec<(String, String)> = shared_names
            .iter()
            .map(|name| (name.clone(), format!("http://{}", fronts[name])))
            .collect();
        // This developer's relay credentials, read once: the tunnel's, and
        // the team token a developer's tunnel admits routed requests with.
        let credentials = workspace
            .config
            .tunnel
            .as_ref()
            .map(|tunnel| tunnel_credentials(&workspace, tunnel));
        // Developers' copies in etcd, followed: never for a service routed
        // here, whose route names this copy.
        if let Some(config) = &workspace.config.remote.etcd {
            let own: Vec<String> = routes.iter().map(|(service, _)| service.clone()).collect();
            let access = match &credentials {
                Some(Ok(credentials)) => Some(Arc::from(credentials.token.as_str())),
                _ => None,
            };
            tasks.push(tokio::spawn(remotes::follow_routes(
                config.clone(),
                Arc::clone(&routed),
                own,
                access,
                logs.clone(),
                shutdown.clone(),
            )));
        }
        let routed_copies: Vec<_> = routes
            .iter()
            .map(|(service, route)| devmesh::remote::etcd::RoutedCopy {
                service: service.clone(),
                route: route.clone(),
                url: String::new(),
                strict: workspace.config.services.get(service).is_some_and(|s| s.strict_route()),
            })
            .collect();
        let sharing = match (&workspace.config.remote.etcd, shared.is_empty() && routes.is_empty()) {
            (Some(config), false) => Some(
                crate::share::Sharing::start(config, shared, routed_copies, tunnel_state.subscribe(), logs.clone())
                    .context("could not start the thread that shares services in etcd")?,
            ),
            (None, false) => {
                logs.note("services are marked `share = true`, but there is no `[remote.etcd]` to share them in");
                None
            }
            (_, true) => None,
        };
        let exposed: BTreeMap<String, crate::tunnel::client::Expose> = selected
            .iter()
            .filter_map(|name| {
                // A routed copy is reached through the tunnel.
                let routed = routes.iter().any(|(service, _)| service == name);
                let config = workspace.config.services.get(name).filter(|s| s.expose || routed)?;
                let expose = crate::tunnel::client::Expose {
                    door: doors.get(name)?.clone(),
                    public: config.public,
                };
                Some((name.clone(), expose))
            })
            .collect();
        let reaching = workspace.config.tunnel.as_ref().is_some_and(|t| !t.reach.is_empty());
        match (&workspace.config.tunnel, exposed.is_empty() && !reaching) {
            (Some(tunnel), false) => match credentials.expect("read for a [tunnel]") {
                Ok(credentials) => tasks.push(tokio::spawn(crate::tunnel::client::run(
                    tunnel.clone(),
                    credentials,
                    exposed,
                    crate::tunnel::client::Told {
                        registry: Arc::clone(state.registry()),
                        remembered: state_dir.join("tunnel.json"),
                        logs: logs.clone(),
                        state: tunnel_state.clone(),
                        live: live_link,
                    },
                    shutdown.clone(),
                ))),
                Err(why) => {
                    logs.note(format!("tunnel: {why}; no service is exposed this run"));
                    tunnel_state.send_modify(|s| {
                        s.relay = tunnel.relay.clone();
                        s.problem = Some(format!("not started: {why}"));
                    });
                }
            },
            (None, false) => {
                logs.note("services are marked `expose = true`, but there is no `[tunnel]` relay to expose them on")
            }
            (_, true) => {}
        }
        if watch {
            tasks.push(tokio::spawn(crate::watch::run(
                crate::watch::Watched::of(&workspace, &selected),
                Arc::clone(&services),
                Arc::clone(&supervisor.builder),
                logs.clone(),
                shutdown.clone(),
            )));
            logs.note("watching for changes");
        }
        Ok(Mesh {
            state_dir,
            services,
            switches,
            inspector,
            logs,
            state,
            supervisor,
            api,
            shutdown,
            tasks,
            proxy_workers,
            sharing,
            routed,
            routes_here: !routes.is_empty(),
            faults: fault_setters,
            _workspace_lock: workspace_lock,
            stopped: false,
        })
    }

    /// The services, to act on or ask what they do.
    pub fn services(&self) -> &Services {
        &self.services
    }

    /// The front address of service `name`: where its callers reach it,
    /// the same across restarts and runs.
    pub fn front(&self, name: &str) -> Option<SocketAddr> {
        self.switches.front(name)
    }

    /// The captured traffic.
    pub fn inspector(&self) -> &Arc<Inspector> {
        &self.inspector
    }

    /// The log lines, and where the log files are.
    pub fn logs(&self) -> &Logs {
        &self.logs
    }

    /// The local API (and inspector page): its address and a first login link.
    pub fn api(&self) -> &control::Serving {
        &self.api
    }

    /// Where the mesh keeps its state: registry, ports, logs, `control.json`.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// Waits until service `name` is ready (or can no longer become so:
    /// failed, crashed, stopped); what it is doing then.
    pub async fn ready(&self, name: &str) -> anyhow::Result<ServiceState> {
        let mut state = self.services.get(name)?.state.clone();
        let settled = state
            .wait_for(|s| {
                matches!(
                    s.status,
                    Status::Ready | Status::Failed | Status::Crashed | Status::Stopped
                )
            })
            .await
            .map_err(|_| anyhow::anyhow!("the mesh is stopping"))?;
        Ok(settled.clone())
    }

    /// Rebuilds (when `build`) and restarts service `name`, blue/green;
    /// `now` cuts what is open to the old instance after the grace period.
    pub async fn restart(&self, name: &str, build: bool, now: bool) -> anyhow::Result<Outcome> {
        Ok(self.handle(name)?.restart(build, now).await)
    }

    pub async fn stop(&self, name: &str) -> anyhow::Result<Outcome> {
        Ok(self.handle(name)?.stop().await)
    }

    pub async fn start_service(&self, name: &str) -> anyhow::Result<Outcome> {
        Ok(self.handle(name)?.start().await)
    }

    /// Sends service `name`'s new requests here, to the sandbox, or (`auto`)
    /// here while it runs: callers keep its front address, and requests in
    /// flight finish where they are. Where its traffic goes then.
    pub async fn set_mode(&self, name: &str, mode: Mode) -> Result<Traffic, ModeRefused> {
        self.services.set_mode(&self.switches, name, mode).await
    }

    /// Sets the faults on service `name`'s front port (none: `Faults::default()`).
    pub fn set_faults(&self, name: &str, faults: proxy::Faults) -> anyhow::Result<()> {
        match self.faults.get(name) {
            Some(setter) => {
                setter.set(faults);
                Ok(())
            }
            None => Err(crate::errors::PlanError::UnknownService {
                name: name.to_owned(),
                known: self.faults.keys().cloned().collect(),
            }
            .into()),
        }
    }

    fn handle(&self, name: &str) -> anyhow::Result<&ServiceHandle> {
        Ok(self.services.get(name)?)
    }

    /// Stops every service gracefully, then the front ports and the API,
    /// and clears this mesh's registry entries.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.logs.note("stopping");
        // Others stop calling a shared service first: a request routed
        // here from now on is sent back to the sandbox's own copy, and what
        // was already in flight is answered before the tunnel and the
        // services go.
        if let Some(sharing) = self.sharing.take() {
            self.routed.leave();
            let _ = tokio::task::spawn_blocking(move || sharing.stop()).await;
            let serving: Vec<_> = self
                .switches
                .all()
                .values()
                .filter_map(|front| front.switch.local_backend())
                .collect();
            let answered = async {
                for backend in &serving {
                    backend.idle().await;
                }
                if self.routes_here {
                    self.routed.quiet_for(ROUTED_QUIET).await;
                }
            };
            let _ = tokio::time::timeout(self.supervisor.drain, answered).await;
        }
        self.shutdown.cancel();
        for task in std::mem::take(&mut self.tasks) {
            let _ = task.await;
        }
        for worker in std::mem::take(&mut self.proxy_workers) {
            let _ = tokio::task::spawn_blocking(move || worker.join()).await;
        }
        self.clear()?;
        self.logs.note("stopped");
        Ok(())
    }

    /// Takes this mesh's services out of the registry and removes
    /// `control.json`.
    fn clear(&mut self) -> std::io::Result<()> {
        self.stopped = true;
        let fronts = self.switches.all();
        self.state.registry().change(|file| {
            for name in fronts.keys() {
                file.services.remove(name);
            }
            if file.services.is_empty() {
                file.supervisor_pid = None;
            }
        })?;
        control::remove(&self.state_dir);
        Ok(())
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        // Nothing waits for a graceful stop here: the tasks go at once (so
        // none writes the registry after it is cleared), and the watchdog
        // ends every service's process group, as if the supervisor had died.
        self.shutdown.cancel();
        for task in &self.tasks {
            task.abort();
        }
        self.supervisor.spawner.end_all();
        let _ = self.clear();
    }
}

/// The registry, `ports.json` and `control.json`'s keeper, the registry
/// listing every front as building; and the port book, shared with its
/// keeper.
fn state_files(
    state_dir: &Path,
    fronts: &BTreeMap<String, SocketAddr>,
    remote_only: &[String],
    ports: PortBook,
) -> Result<(StateFiles, Arc<std::sync::Mutex<PortBook>>), StartError> {
    // The files are copies of what the supervisor holds: written whole, and
    // put back when damaged (see `state`).
    let entries = fronts
        .iter()
        .map(|(name, front)| {
            let mut entry = Entry::new(format!("http://{front}"));
            entry.status = match remote_only.contains(name) {
                true => Status::Remote,
                false => Status::Building,
            };
            (name.clone(), entry)
        })
        .collect();
    let state = StateFiles::new(state_dir.join(devmesh::registry::FILE_NAME), entries);
    let written = |path: &Path| {
        let path = path.to_path_buf();
        move |source| StartError::File {
            action: "write",
            path,
            source,
        }
    };
    state
        .registry()
        .change(|_| ())
        .map_err(written(state.registry().path()))?;
    let ports_path = ports.path().to_path_buf();
    let ports = Arc::new(std::sync::Mutex::new(ports));
    let book = Arc::clone(&ports);
    state
        .keep(ports_path.clone(), move || {
            book.lock().unwrap_or_else(|e| e.into_inner()).json()
        })
        .map_err(written(&ports_path))?;
    Ok((state, ports))
}

/// How this developer connects to the relay: the token from
/// `DEVMESH_TUNNEL_TOKEN`, else the `token_file`; TLS with `tls` or `ca`
/// (files relative to the workspace; `~/` is the home folder).
fn tunnel_credentials(
    workspace: &Workspace,
    tunnel: &devmesh::config::TunnelConfig,
) -> Result<crate::tunnel::client::Credentials, String> {
    let path = |file: &Path| match (file.strip_prefix("~"), std::env::var_os("HOME")) {
        (Ok(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => workspace.root.join(file),
    };
    let token = match std::env::var("DEVMESH_TUNNEL_TOKEN").ok().filter(|t| !t.is_empty()) {
        Some(token) => token,
        None => {
            let Some(file) = &tunnel.token_file else {
                return Err("no token: set `token_file` in `[tunnel]`, or `DEVMESH_TUNNEL_TOKEN`".to_owned());
            };
            let file = path(file);
            let token =
                std::fs::read_to_string(&file).map_err(|e| format!("the token file `{}`: {e}", file.display()))?;
            token.trim().to_owned()
        }
    };
    let tls = match (tunnel.tls, &tunnel.ca) {
        (false, None) => None,
        (_, ca) => Some(crate::proxy::tls::connector(
            ca.as_deref().map(path).as_deref(),
            "`[tunnel] ca`",
        )?),
    };
    Ok(crate::tunnel::client::Credentials { token, tls })
}

/// Holds the workspace for this run: a second `run` is refused even when
/// the state folder, `control.json` included, was deleted. The lock is on
/// the workspace's folder itself, which outlives anything in it.
fn lock_workspace(root: &Path) -> Result<std::fs::File, StartError> {
    let opened = |source| StartError::File {
        action: "open",
        path: root.to_path_buf(),
        source,
    };
    let folder = std::fs::File::open(root).map_err(opened)?;
    match crate::platform::lock(&folder, false).map_err(opened)? {
        true => Ok(folder),
        false => Err(StartError::Locked {
            root: root.to_path_buf(),
        }),
    }
}

/// The run's first build, reported in the logs.
async fn build_all(supervisor: &Supervisor) -> Built {
    let targets = supervisor.builder.targets();
    if targets.is_empty() {
        return Built::default();
    }
    supervisor.logs.note(format!("building {}", names(targets)));
    let built = match supervisor.builder.build().await {
        Ok(built) => built,
        Err(e) => {
            supervisor.logs.note(format!("could not run `cargo build`: {e}"));
            Built::default()
        }
    };
    let failed: Vec<_> = targets
        .iter()
        .filter(|t| !built.binaries.contains_key(t))
        .cloned()
        .collect();
    if !failed.is_empty() {
        let next = if failed.len() == targets.len() {
            "fix it, then `cargo devmesh restart` them (or save, with --watch)"
        } else {
            "the other services start; fix it, then `cargo devmesh restart` them"
        };
        supervisor
            .logs
            .note(format!("the build of {} failed; {next}", names(&failed)));
    }
    built
}

fn names(targets: &[BinTarget]) -> String {
    targets
        .iter()
        .map(|t| format!("`{}`", t.bin))
        .collect::<Vec<_>>()
        .join(", ")
}
