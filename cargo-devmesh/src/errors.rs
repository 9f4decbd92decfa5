//! Errors that end a `cargo devmesh` command before or as it starts. Errors
//! met while services run (a crash, a failed build) are reported and the run
//! goes on; they are not here.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Why the workspace cannot be planned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    #[error("could not read the workspace with `cargo metadata`: {0}")]
    Metadata(String),
    #[error(transparent)]
    Config(#[from] devmesh::Error),
    #[error("unknown service `{name}` (hint: {})", suggest(name, known))]
    UnknownService { name: String, known: Vec<String> },
    #[error("unknown package `{package}`: no service is built from it")]
    UnknownPackage { package: String },
    #[error(
        "service `{service}` depends on `{dependency}`, which is not a service \
         (hint: the workspace has {})",
        list(known)
    )]
    UnknownDependency {
        service: String,
        dependency: String,
        known: Vec<String>,
    },
    #[error("services depend on each other in a cycle: {}", cycle.join(" → "))]
    DependencyCycle { cycle: Vec<String> },
    #[error(
        "service `{service}` in `devmesh.toml`: {detail} (hint: name a workspace \
         binary with `package`/`bin`, or give a `command`)"
    )]
    NoBinary { service: String, detail: String },
    #[error("`{}` line {line}: {detail} (hint: one `KEY=value` a line)", path.display())]
    EnvFile { path: PathBuf, line: usize, detail: String },
    #[error("could not read the `env_file` `{}`: {source} (hint: fix the path in `devmesh.toml`)", path.display())]
    EnvFileUnreadable { path: PathBuf, source: std::io::Error },
}

/// Why the supervisor cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    #[error(
        "front port {port} for service `{service}` is in use by another program{holder} \
         (hint: stop it, or give the service another `port` in `devmesh.toml`): {source}"
    )]
    PortInUse {
        service: String,
        port: u16,
        /// ` (held by `nginx` (pid 123))`, when it can be found.
        holder: String,
        source: std::io::Error,
    },
    #[error(
        "no free port is left in {low}-{high} for service `{service}` \
         (hint: widen `run.ports` in `devmesh.toml`)"
    )]
    NoFreePort { service: String, low: u16, high: u16 },
    #[error(
        "a supervisor is already running for this workspace (pid {pid}, API at {addr}) \
         (hint: use `cargo devmesh ps`, or stop it first)"
    )]
    AlreadyRunning { pid: u32, addr: SocketAddr },
    #[error(
        "a supervisor is already running for the workspace at `{}` (it holds the workspace's lock) \
         (hint: stop it with Ctrl-C in its terminal, or find it with `pgrep -af 'devmesh run'`)",
        root.display()
    )]
    Locked { root: PathBuf },
    #[error("could not {action} `{}`: {source}", path.display())]
    File {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("`{}` is corrupt: {detail} (hint: delete it; ports are then assigned anew)", path.display())]
    CorruptState { path: PathBuf, detail: String },
    #[error("could not listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
}

/// `did you mean `orders`?` for a likely typo, else the names there are.
fn suggest(name: &str, known: &[String]) -> String {
    match devmesh::name::near_miss(name, known.iter().map(String::as_str)) {
        Some(near) => format!("did you mean `{near}`?"),
        None => format!("the workspace has {}", list(known)),
    }
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "no services".to_owned()
    } else {
        names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
    }
}
