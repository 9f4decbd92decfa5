//! What to run: the workspace's services, from `cargo metadata` and
//! `devmesh.toml`. Owns nothing at run time; the supervisor takes the plan.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use cargo_metadata::PackageId;
use devmesh::config::{Config, Mode, Protocol, Readiness, ServiceConfig};

use crate::errors::PlanError;

mod shape;

pub use shape::{Member, Shape};

/// A workspace ready to run.
#[derive(Debug, Clone)]
pub struct Workspace {
    /// The workspace root, where `devmesh.toml` lives.
    pub root: PathBuf,
    /// `Cargo.toml` of the workspace, passed to every `cargo build`.
    pub manifest_path: PathBuf,
    /// Cargo's target folder: build output, never a source change.
    pub target_dir: PathBuf,
    /// Where the supervisor keeps ports, registry, logs and control files.
    pub state_dir: PathBuf,
    /// `devmesh.toml`'s path (it may not exist).
    pub config_path: PathBuf,
    pub config: Config,
    /// Every service the workspace defines, by name.
    pub services: BTreeMap<String, ServiceSpec>,
    /// For `--watch`: each workspace package's folder, and the workspace
    /// packages each one depends on, directly or not.
    pub packages: Vec<PackageInfo>,
}

/// A workspace package, for mapping changed files to services.
#[derive(Debug, Clone)]
pub struct PackageInfo {
    pub id: PackageId,
    pub dir: PathBuf,
    /// Workspace packages this one depends on, transitively (not itself).
    pub depends_on: BTreeSet<PackageId>,
}

/// One service and how to run it.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    pub name: String,
    pub launch: Launch,
    pub args: Vec<String>,
    pub cwd: PathBuf,
    pub env: BTreeMap<String, String>,
    /// What `--watch` restarts a command on (empty: nothing).
    pub watch: Vec<PathBuf>,
    /// A front port fixed in config, over the one kept in `ports.json`.
    pub port: Option<u16>,
    pub depends_on: Vec<String>,
    pub ready: Readiness,
    pub protocol: Protocol,
    pub inject_env: bool,
    /// Where its front port sends traffic at first (see `proxy::switch`).
    pub mode: Mode,
}

impl ServiceSpec {
    /// The binary target it runs, if it is a workspace binary.
    pub fn bin_target(&self) -> Option<crate::build::BinTarget> {
        match &self.launch {
            Launch::Binary { package, bin, .. } => Some(crate::build::BinTarget {
                package: package.clone(),
                bin: bin.clone(),
            }),
            Launch::Command(_) => None,
        }
    }
}

/// How a service's process is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Launch {
    /// A workspace binary, built by `cargo build`.
    Binary {
        package: String,
        package_id: PackageId,
        bin: String,
        /// Whether it links devmesh, and so takes its socket by `LISTEN_FDS`
        /// rather than binding `PORT` itself.
        links_devmesh: bool,
    },
    /// A shell command, run as is.
    Command(String),
}

/// Options that shape the cargo invocations, as in `cargo build`.
#[derive(Debug, Clone, Default)]
pub struct CargoOptions {
    pub manifest_path: Option<PathBuf>,
    pub release: bool,
    pub features: Vec<String>,
    pub all_features: bool,
    pub no_default_features: bool,
    /// Cargo's `--target-dir`: where the services are built.
    pub target_dir: Option<PathBuf>,
}

impl CargoOptions {
    /// The flags to pass to `cargo build` (besides the manifest path).
    pub fn build_flags(&self) -> Vec<String> {
        let mut flags = Vec::new();
        if self.release {
            flags.push("--release".to_owned());
        }
        for feature in &self.features {
            flags.extend(["--features".to_owned(), feature.clone()]);
        }
        if self.all_features {
            flags.push("--all-features".to_owned());
        }
        if self.no_default_features {
            flags.push("--no-default-features".to_owned());
        }
        if let Some(dir) = &self.target_dir {
            flags.extend(["--target-dir".to_owned(), dir.display().to_string()]);
        }
        flags
    }
}

/// The package of this tool, never a service even though it links devmesh.
const SELF_PACKAGE: &str = "cargo-devmesh";

impl Workspace {
    /// Reads the workspace around `options.manifest_path` (or the current folder).
    pub fn load(options: &CargoOptions) -> Result<Workspace, PlanError> {
        Workspace::of(Shape::read(options.manifest_path.as_deref())?)
    }

    /// The workspace `shape` gives, with its `devmesh.toml` and `.env`
    /// files read now.
    pub fn of(shape: Shape) -> Result<Workspace, PlanError> {
        let root = shape.root.clone();
        let config_path = root.join(devmesh::config::FILE_NAME);
        let config = Config::load(&config_path)?;
        let state_dir = std::env::var_os("DEVMESH_STATE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| shape.target_directory.join("devmesh"));
        let services = services(&shape.members, &config, &root)?;
        Ok(Workspace {
            manifest_path: root.join("Cargo.toml"),
            packages: shape
                .members
                .iter()
                .map(|m| PackageInfo {
                    id: m.id.clone(),
                    dir: m.dir.clone(),
                    depends_on: m.depends_on.clone(),
                })
                .collect(),
            target_dir: shape.target_directory,
            root,
            state_dir,
            config_path,
            config,
            services,
        })
    }

    /// `selected` and what they depend on, dependencies before dependents
    /// (the plan has no cycles).
    pub fn start_order(&self, selected: &[String]) -> Vec<String> {
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
            visit(name, self, &mut order);
        }
        order
    }

    /// The services to run for the names asked for (all when none), with
    /// everything they depend on; `packages` narrows to those packages.
    pub fn select(&self, names: &[String], packages: &[String]) -> Result<Vec<String>, PlanError> {
        let mut wanted: Vec<String> = if names.is_empty() && packages.is_empty() {
            self.services.keys().cloned().collect()
        } else {
            names.to_vec()
        };
        for package in packages {
            let before = wanted.len();
            wanted.extend(self.services.values().filter_map(|s| match &s.launch {
                Launch::Binary { package: p, .. } if p == package => Some(s.name.clone()),
                _ => None,
            }));
            if wanted.len() == before {
                return Err(PlanError::UnknownPackage {
                    package: package.clone(),
                });
            }
        }
        let mut selected = BTreeSet::new();
        while let Some(name) = wanted.pop() {
            let service = self.service(&name)?;
            if selected.insert(name) {
                wanted.extend(service.depends_on.iter().cloned());
            }
        }
        Ok(selected.into_iter().collect())
    }

    /// The service called `name`, or an error listing those there are.
    pub fn service(&self, name: &str) -> Result<&ServiceSpec, PlanError> {
        self.services.get(name).ok_or_else(|| PlanError::UnknownService {
            name: name.to_owned(),
            known: self.services.keys().cloned().collect(),
        })
    }
}

/// Every service: workspace binaries that link devmesh, merged with
/// `[services.*]` from the config.
fn services(members: &[Member], config: &Config, root: &Path) -> Result<BTreeMap<String, ServiceSpec>, PlanError> {
    let mut services = BTreeMap::new();
    for package in members
        .iter()
        .filter(|p| p.name.as_str() != SELF_PACKAGE && p.links_devmesh)
    {
        let bins = &package.bins;
        for bin in bins {
            // One binary: the service is the package; several: each binary.
            let name = devmesh::name::from_package(if bins.len() == 1 { &package.name } else { bin });
            services.insert(name.clone(), default_spec(&name, binary(package, bin), root));
        }
    }
    for (name, entry) in &config.services {
        // In the sandbox only: no copy here to run.
        if entry.mode == Mode::Remote
            && entry.command.is_none()
            && entry.package.is_none()
            && !services.contains_key(name)
        {
            continue;
        }
        let launch = match (&entry.command, services.get(name)) {
            (Some(command), _) => Launch::Command(command.clone()),
            (None, Some(found)) if entry.package.is_none() && entry.bin.is_none() => found.launch.clone(),
            (None, _) => configured_binary(name, entry, members)?,
        };
        let mut spec = default_spec(name, launch, root);
        apply(&mut spec, entry, root);
        if let Some(file) = &entry.env_file {
            let mut env = crate::dotenv::read(&root.join(file), false)?;
            env.append(&mut spec.env);
            spec.env = env;
        }
        services.insert(name.clone(), spec);
    }
    // The root's `.env` is every service's, under what each sets itself.
    let shared = crate::dotenv::read(&root.join(".env"), true)?;
    for spec in services.values_mut() {
        for (key, value) in &shared {
            spec.env.entry(key.clone()).or_insert_with(|| value.clone());
        }
    }
    for service in services.values() {
        for dependency in &service.depends_on {
            if !services.contains_key(dependency) {
                return Err(PlanError::UnknownDependency {
                    service: service.name.clone(),
                    dependency: dependency.clone(),
                    known: services.keys().cloned().collect(),
                });
            }
        }
    }
    check_cycles(&services)?;
    Ok(services)
}

fn default_spec(name: &str, launch: Launch, root: &Path) -> ServiceSpec {
    ServiceSpec {
        name: name.to_owned(),
        launch,
        args: Vec::new(),
        cwd: root.to_path_buf(),
        env: BTreeMap::new(),
        watch: Vec::new(),
        port: None,
        depends_on: Vec::new(),
        ready: Readiness::default(),
        protocol: Protocol::default(),
        inject_env: false,
        mode: Mode::default(),
    }
}

fn apply(spec: &mut ServiceSpec, entry: &ServiceConfig, root: &Path) {
    spec.args = entry.args.clone();
    spec.cwd = entry
        .cwd
        .as_ref()
        .map_or_else(|| root.to_path_buf(), |cwd| root.join(cwd));
    spec.env = entry.env.clone();
    spec.watch = match (&entry.watch, &entry.cwd) {
        (Some(paths), _) => paths.iter().map(|p| root.join(p)).collect(),
        (None, Some(cwd)) => vec![root.join(cwd)],
        // Its cwd is the root: what no workspace package below it holds
        // (see `watch::Watched::affected`).
        (None, None) => vec![root.to_path_buf()],
    };
    spec.port = entry.port;
    spec.depends_on = entry.depends_on.clone();
    // A TCP service is ready when it accepts, unless it says otherwise: an
    // HTTP request would never get an answer that proves it.
    spec.ready = match (&entry.ready, entry.protocol) {
        (Readiness::Responds, Protocol::Tcp) => Readiness::Tcp,
        (ready, _) => ready.clone(),
    };
    spec.protocol = entry.protocol;
    spec.inject_env = entry.inject_env;
    spec.mode = entry.mode;
}

/// A binary named in config by `package` and/or `bin`.
fn configured_binary(name: &str, entry: &ServiceConfig, members: &[Member]) -> Result<Launch, PlanError> {
    let package_name = entry.package.as_deref().unwrap_or(name);
    let package = members
        .iter()
        .find(|p| p.name.as_str() == package_name || devmesh::name::from_package(&p.name) == package_name)
        .ok_or_else(|| PlanError::NoBinary {
            service: name.to_owned(),
            detail: format!("the workspace has no package `{package_name}`"),
        })?;
    let bins = &package.bins;
    let bin = match &entry.bin {
        Some(bin) if bins.contains(bin) => bin.clone(),
        Some(bin) => {
            return Err(PlanError::NoBinary {
                service: name.to_owned(),
                detail: format!(
                    "package `{}` has no binary `{bin}` (it has: {})",
                    package.name,
                    bins.join(", ")
                ),
            });
        }
        None if bins.len() == 1 => bins[0].clone(),
        None => {
            return Err(PlanError::NoBinary {
                service: name.to_owned(),
                detail: format!(
                    "package `{}` has {} binaries ({}); set `bin`",
                    package.name,
                    bins.len(),
                    bins.join(", ")
                ),
            });
        }
    };
    Ok(binary(package, &bin))
}

fn binary(package: &Member, bin: &str) -> Launch {
    Launch::Binary {
        package: package.name.clone(),
        package_id: package.id.clone(),
        bin: bin.to_owned(),
        links_devmesh: package.links_devmesh,
    }
}

fn check_cycles(services: &BTreeMap<String, ServiceSpec>) -> Result<(), PlanError> {
    fn visit<'a>(
        name: &'a str,
        services: &'a BTreeMap<String, ServiceSpec>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Result<(), PlanError> {
        if let Some(start) = path.iter().position(|&n| n == name) {
            let mut cycle: Vec<_> = path[start..].iter().map(|s| s.to_string()).collect();
            cycle.push(name.to_owned());
            return Err(PlanError::DependencyCycle { cycle });
        }
        if !done.insert(name) {
            return Ok(());
        }
        path.push(name);
        for dependency in &services[name].depends_on {
            visit(dependency, services, path, done)?;
        }
        path.pop();
        Ok(())
    }
    let mut done = BTreeSet::new();
    for name in services.keys() {
        visit(name, services, &mut Vec::new(), &mut done)?;
    }
    Ok(())
}
