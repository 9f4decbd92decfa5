//! The command line, as `cargo devmesh --help` shows it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Exit codes, documented in `--help`.
pub const EXIT_FAILURE: i32 = 1;
pub const EXIT_USAGE: i32 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "cargo-devmesh",
    bin_name = "cargo devmesh",
    version,
    about = "Build, run and supervise a workspace's services, with ports that never change.",
    after_help = "Exit codes: 0 success; 1 the command failed; 2 bad arguments or a bad devmesh.toml."
)]
pub struct Cli {
    /// Path to the workspace's Cargo.toml.
    #[arg(long, global = true, value_name = "PATH")]
    pub manifest_path: Option<PathBuf>,
    /// Without one, the help is shown.
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build the services and run them until Ctrl-C.
    Run(RunArgs),
    /// Show each service's status, front address, process and mode, and the remote backends
    Ps,
    /// List the developers' copies in `[remote.etcd]`'s namespace: each service's routes and where they go
    Routes,
    /// Rebuild and restart services, without disturbing the others.
    Restart {
        #[arg(required = true, value_name = "SERVICE")]
        services: Vec<String>,
        /// Restart on the binary already built.
        #[arg(long)]
        no_build: bool,
        /// Stop the old instance after the grace period, cutting its open
        /// WebSockets and streams, instead of letting them end (up to
        /// `run.drain_timeout`).
        #[arg(long)]
        now: bool,
    },
    /// Stop services; their front ports stay, and requests wait.
    Stop {
        #[arg(required = true, value_name = "SERVICE")]
        services: Vec<String>,
    },
    /// Start services that were stopped.
    Start {
        #[arg(required = true, value_name = "SERVICE")]
        services: Vec<String>,
    },
    /// Run the tunnel relay a team keeps in its sandbox
    #[command(after_long_help = cargo_devmesh::tunnel::relay::KEYS_HELP)]
    Relay {
        /// The relay's config file (see `devmesh-relay`).
        #[arg(long, value_name = "FILE")]
        config: std::path::PathBuf,
    },
    /// Send a service's traffic here, to the sandbox, or here while it runs
    ///
    /// `local`, `remote` or `auto`, while everything runs: callers keep its
    /// front address, requests in flight finish where they began, and
    /// nothing is restarted.
    Mode {
        service: String,
        #[arg(value_parser = ["local", "remote", "auto"])]
        mode: String,
    },
    /// Show the logs of some services (all by default), interleaved.
    Logs {
        #[arg(value_name = "SERVICE")]
        services: Vec<String>,
        /// Keep showing new lines.
        #[arg(short, long)]
        follow: bool,
        /// Only lines newer than this: `30s`, `5m` (from earlier runs too;
        /// by default, the current or last run's lines).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        since: Option<std::time::Duration>,
        /// Only the last N lines (from earlier runs too).
        #[arg(short = 'n', long, value_name = "N")]
        lines: Option<usize>,
        /// Only the lines of one request, from every service: those that
        /// mention its trace id (OTLP log records carry theirs).
        #[arg(long, value_name = "TRACE_ID", value_parser = parse_trace_id)]
        trace: Option<String>,
    },
    /// Print a new link that logs a browser into the inspector (each works once).
    Inspector,
    /// Show the requests between services, as the inspector captured them.
    Traffic {
        /// Only exchanges to or from this service.
        #[arg(value_name = "SERVICE")]
        service: Option<String>,
        /// Keep showing new exchanges.
        #[arg(short, long)]
        follow: bool,
        /// Print HAR 1.2 (opens in browser dev tools).
        #[arg(long, conflicts_with_all = ["jsonl", "follow"])]
        har: bool,
        /// Print one JSON object per exchange, with headers and bodies.
        #[arg(long)]
        jsonl: bool,
        /// How many of the newest exchanges to show first (JSON lines and
        /// HAR have every one kept).
        #[arg(short = 'n', long, value_name = "N", default_value_t = 50)]
        lines: usize,
        /// Write a test that sends this exchange's request again (its
        /// number, or a trace id) and asserts the calls of its trace as
        /// they were captured, to the tests of its service's package.
        #[arg(long, value_name = "EXCHANGE_OR_TRACE", conflicts_with_all = ["har", "jsonl", "follow", "service"])]
        as_test: Option<String>,
        /// With `--as-test`: this service stands in with what it answered
        /// rather than running in the test; repeatable.
        #[arg(long, value_name = "SERVICE", requires = "as_test")]
        stub: Vec<String>,
        /// With `--as-test`: print the test rather than writing it.
        #[arg(long, requires = "as_test")]
        print: bool,
    },
    /// Send a captured request again, as it was or edited.
    Replay {
        /// The exchange's number, as `traffic` and the inspector show it.
        id: u64,
        /// Another method.
        #[arg(short = 'X', long)]
        method: Option<String>,
        /// Another path and query.
        #[arg(long)]
        path: Option<String>,
        /// A header to set, `Name: value`; repeatable.
        #[arg(short = 'H', long = "header", value_name = "HEADER")]
        headers: Vec<String>,
        /// Another body.
        #[arg(short, long)]
        body: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Services to run, with those they depend on (default: all).
    #[arg(value_name = "SERVICE")]
    pub services: Vec<String>,
    /// Run the services built from these packages.
    #[arg(short, long = "package", value_name = "SPEC")]
    pub packages: Vec<String>,
    /// Build with the release profile.
    #[arg(long)]
    pub release: bool,
    /// Features to activate, as with cargo.
    #[arg(short = 'F', long, value_name = "FEATURES", value_delimiter = ',')]
    pub features: Vec<String>,
    /// Activate all features.
    #[arg(long)]
    pub all_features: bool,
    /// Do not activate the `default` feature.
    #[arg(long)]
    pub no_default_features: bool,
    /// Rebuild and restart the services whose code changes.
    #[arg(short, long)]
    pub watch: bool,
}

/// A W3C trace id: 32 hex digits, lower-cased.
fn parse_trace_id(text: &str) -> Result<String, String> {
    match text.len() == 32 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        true => Ok(text.to_ascii_lowercase()),
        false => Err(format!(
            "`{text}` is no trace id: 32 hex digits, as in the inspector or a `traceparent`"
        )),
    }
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like `30s` or `5m`"))?;
    let seconds = match unit {
        "s" | "" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("`{text}` has an unknown unit; use s, m, h or d")),
    };
    Ok(std::time::Duration::from_secs(number * seconds))
}
