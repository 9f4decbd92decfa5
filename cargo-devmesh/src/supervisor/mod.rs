//! The supervisor: builds the selected services, holds their front ports,
//! runs one task per service, serves the control API, and on shutdown stops
//! everything and clears its registry entries.
//!
//! It owns processes (through [`service`] tasks); the proxy owns connections,
//! the logs module owns log files.

pub mod process;
mod readiness;
pub mod service;
pub mod state;
pub mod watchdog;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use devmesh::registry::{Entry, Status};
use tokio_util::sync::CancellationToken;

use crate::build::{BinTarget, Builder, Built};
use crate::control;
use crate::errors::StartError;
use crate::inspector::Inspector;
use crate::logs::Logs;
use crate::ports::PortBook;
use crate::proxy::{self, Front};
use crate::workspace::{CargoOptions, Workspace};
pub use service::ServiceHandle;
use state::StateFiles;

/// What `cargo devmesh run` was asked for.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub services: Vec<String>,
    pub packages: Vec<String>,
    pub cargo: CargoOptions,
    pub watch: bool,
}

/// Runs the workspace's services until `shutdown`.
pub async fn run(workspace: Workspace, options: RunOptions, shutdown: CancellationToken) -> anyhow::Result<()> {
    let state_dir = workspace.state_dir.clone();
    control::ensure_not_running(&state_dir)?;
    let _only_run = lock_workspace(&workspace.root)?;
    // The token, logs and registry: the user's alone.
    crate::secret::private_dir(&state_dir).map_err(|source| StartError::File {
        action: "create",
        path: state_dir.clone(),
        source,
    })?;
    let selected = workspace.select(&options.services, &options.packages)?;
    if selected.is_empty() {
        anyhow::bail!(
            "the workspace at `{}` has no services (hint: a service is a binary that depends on \
             `devmesh`, or a `[services.NAME]` with a `command` in `devmesh.toml`)",
            workspace.root.display()
        );
    }

    let mut ports = PortBook::open(&state_dir, &workspace.root)?;
    let mut listeners = BTreeMap::new();
    for name in &selected {
        let spec = &workspace.services[name];
        let listener = ports.bind(name, spec.port, workspace.config.run.ports)?;
        listeners.insert(name.clone(), listener);
    }
    let inspector_listener = ports.bind_inspector(workspace.config.run.ports)?;
    ports.commit();
    let fronts: BTreeMap<String, std::net::SocketAddr> = listeners
        .iter()
        .map(|(name, l)| Ok((name.clone(), l.local_addr()?)))
        .collect::<std::io::Result<_>>()?;

    let logs =
        Logs::new(&state_dir, &selected, workspace.config.logs.clone()).context("could not create the log folder")?;
    // The files are copies of what the supervisor holds: written whole, and
    // put back when damaged (see `state`).
    let entries = fronts
        .iter()
        .map(|(name, front)| {
            let mut entry = Entry::new(format!("http://{front}"));
            entry.status = Status::Building;
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
    let ports = Arc::new(ports);
    let ports_path = ports.path().to_path_buf();
    state
        .keep(ports_path.clone(), move || ports.json())
        .map_err(written(&ports_path))?;

    let targets: Vec<BinTarget> = selected
        .iter()
        .filter_map(|name| bin_target(&workspace, name))
        .collect();
    let builder = Builder::new(workspace.manifest_path.clone(), options.cargo.build_flags(), targets);
    let (first_build, first_build_rx) = tokio::sync::watch::channel(None);

    let proxy_threads = proxy::threads();
    let inspector = Arc::new(
        Inspector::new(workspace.config.inspector.clone(), proxy_threads)
            .context("could not start the inspector's thread")?,
    );
    let shared = Arc::new(service::Shared {
        inspector: Arc::clone(&inspector),
        spawner: process::Spawner::start(workspace.config.run.grace_period)
            .context("could not start the watchdog that ends services if the supervisor dies")?,
        logs: logs.clone(),
        builder,
        registry: Arc::clone(state.registry()),
        config_path: workspace.config_path.is_file().then(|| workspace.config_path.clone()),
        fronts: fronts.clone(),
        grace: workspace.config.run.grace_period,
        drain: workspace.config.run.drain_timeout,
    });
    let mut handles: BTreeMap<String, ServiceHandle> = BTreeMap::new();
    let mut tasks = Vec::new();
    let mut fronts_to_serve = Vec::new();
    for name in start_order(&workspace, &selected) {
        let spec = workspace.services[&name].clone();
        let spec_protocol = spec.protocol;
        let dependencies = spec.depends_on.iter().map(|d| handles[d].state.clone()).collect();
        let (handle, route, task) = service::spawn(
            spec,
            first_build_rx.clone(),
            fronts[&name],
            dependencies,
            Arc::clone(&shared),
            shutdown.clone(),
        );
        let listener = listeners
            .remove(&name)
            .expect("every selected service has a front port");
        fronts_to_serve.push(Front {
            service: name.clone(),
            listener,
            route,
            protocol: spec_protocol,
            timeouts: proxy::Timeouts::new(
                workspace.config.run.ready_timeout,
                workspace.config.run.response_timeout,
            ),
            max_connections: proxy::MAX_CONNECTIONS,
            inspector: Arc::clone(&inspector),
        });
        handles.insert(name, handle);
        tasks.push(task);
    }
    let proxy_workers =
        proxy::start(fronts_to_serve, proxy_threads, shutdown.clone()).context("could not start the front ports")?;
    let handles = Arc::new(handles);
    let mesh = control::Mesh {
        services: Arc::clone(&handles),
        inspector: Arc::clone(&inspector),
        logs: logs.clone(),
    };
    let api = control::serve(&state, &state_dir, inspector_listener, mesh, shutdown.clone()).await?;
    tokio::spawn(state.clone().guard(logs.clone(), shutdown.clone()));
    logs.note(format!(
        "inspector on http://{}/ (log in once with {}; `cargo devmesh inspector` prints a new link)",
        api.addr, api.first_login
    ));
    // Commands and the front ports are up while the services build.
    first_build.send_replace(Some(Arc::new(build_all(&shared).await)));
    if options.watch {
        tokio::spawn(crate::watch::run(
            crate::watch::Watched::of(&workspace, &selected),
            Arc::clone(&handles),
            Arc::clone(&shared),
            shutdown.clone(),
        ));
        logs.note("watching for changes");
    }

    shutdown.cancelled().await;
    logs.note("stopping");
    for task in tasks {
        let _ = task.await;
    }
    for worker in proxy_workers {
        let _ = tokio::task::spawn_blocking(move || worker.join()).await;
    }
    state.registry().change(|file| {
        for name in &selected {
            file.services.remove(name);
        }
        if file.services.is_empty() {
            file.supervisor_pid = None;
        }
    })?;
    control::remove(&state_dir);
    logs.note("stopped");
    Ok(())
}

/// Holds the workspace for this run: a second `run` is refused even when
/// the state folder, `control.json` included, was deleted. The lock is on
/// the workspace's folder itself, which outlives anything in it; the kernel
/// lets it go when the supervisor ends, however it ends.
fn lock_workspace(root: &Path) -> Result<std::fs::File, StartError> {
    let folder = std::fs::File::open(root).map_err(|source| StartError::File {
        action: "open",
        path: root.to_path_buf(),
        source,
    })?;
    // SAFETY: flock on a descriptor this function owns.
    if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&folder), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(StartError::Locked {
            root: root.to_path_buf(),
        });
    }
    Ok(folder)
}

/// The run's first build, reported on the terminal.
async fn build_all(shared: &service::Shared) -> Built {
    let targets = shared.builder.targets();
    if targets.is_empty() {
        return Built::default();
    }
    shared.logs.note(format!("building {}", names(targets)));
    let built = match shared.builder.build().await {
        Ok(built) => built,
        Err(e) => {
            shared.logs.note(format!("could not run `cargo build`: {e}"));
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
        shared
            .logs
            .note(format!("the build of {} failed; {next}", names(&failed)));
    }
    built
}

/// The binary target a service runs, if it is a workspace binary.
pub fn bin_target(workspace: &Workspace, name: &str) -> Option<BinTarget> {
    workspace.services.get(name)?.bin_target()
}

/// Dependencies before dependents (the plan has no cycles).
fn start_order(workspace: &Workspace, selected: &[String]) -> Vec<String> {
    fn visit(name: &str, workspace: &Workspace, order: &mut Vec<String>) {
        if order.iter().any(|n| n == name) {
            return;
        }
        for dependency in &workspace.services[name].depends_on {
            visit(dependency, workspace, order);
        }
        order.push(name.to_owned());
    }
    let mut order = Vec::new();
    for name in selected {
        visit(name, workspace, &mut order);
    }
    order
}

fn names(targets: &[BinTarget]) -> String {
    targets
        .iter()
        .map(|t| format!("`{}`", t.bin))
        .collect::<Vec<_>>()
        .join(", ")
}
