//! `cargo devmesh`: build, run and supervise a workspace's services.
//!
//! # Layout
//!
//! - `cli`: the command line;
//! - `workspace`: which services there are (cargo metadata + devmesh.toml);
//! - `dotenv`: `.env` files, as honcho and docker compose read them;
//! - `build`: `cargo build` for the services' binaries;
//! - `ports`: stable front ports, kept in `ports.json`;
//! - `supervisor/`: one task per service, owning its processes;
//! - `proxy/`: the front ports, forwarding to the ready instance;
//! - `inspector/`: captured traffic: store, export, replay support, the page;
//! - `logs/`: interleaved terminal output and per-service log files;
//! - `control/`: the local API other terminals and the inspector page use;
//! - `traffic`: `traffic` and `replay`, the inspector in a terminal;
//! - `watch`: `--watch`, rebuilding what changed;
//! - `secret`: random tokens and owner-only files;
//! - `errors`: errors that end a command.

mod build;
mod cli;
mod control;
mod dotenv;
mod errors;
mod inspector;
mod logs;
mod ports;
mod proxy;
mod secret;
mod supervisor;
mod traffic;
mod watch;
mod workspace;

use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;

use cli::{Cli, Command};
use workspace::{CargoOptions, Workspace};

fn main() -> ExitCode {
    // Before anything opens a descriptor: see `supervisor::process`.
    supervisor::process::reserve_listen_fd();
    // `cargo devmesh x` runs `cargo-devmesh devmesh x`; the alias in
    // `.cargo/config.toml` runs `cargo-devmesh x`. Accept both.
    let mut args: Vec<_> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == supervisor::watchdog::ARG) {
        let grace = args.get(2).and_then(|g| g.to_str()?.parse().ok()).unwrap_or(5000);
        supervisor::watchdog::serve(std::time::Duration::from_millis(grace));
        return ExitCode::SUCCESS;
    }
    if args.get(1).is_some_and(|a| a == "devmesh") {
        args.remove(1);
    }
    let cli = Cli::parse_from(args);
    // One thread: the supervisor mostly waits, and its proxy forwards
    // faster without handing work between threads (measured in bench/proxy).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime starts");
    match runtime.block_on(execute(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", in_words(&e));
            let usage = e.downcast_ref::<errors::PlanError>().is_some();
            ExitCode::from(if usage { cli::EXIT_USAGE } else { cli::EXIT_FAILURE } as u8)
        }
    }
}

/// The error and its causes, each said once: our errors name their cause
/// in their own words, and the chain would repeat it.
fn in_words(error: &anyhow::Error) -> String {
    let mut text = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

async fn execute(cli: Cli) -> anyhow::Result<()> {
    let mut cargo = CargoOptions {
        manifest_path: cli.manifest_path,
        ..CargoOptions::default()
    };
    let Some(command) = cli.command else {
        // Bare `cargo devmesh` asks what there is: the help, and success.
        use clap::CommandFactory;
        Cli::command().print_help()?;
        return Ok(());
    };
    match command {
        Command::Run(args) => {
            cargo.release = args.release;
            cargo.features = args.features;
            cargo.all_features = args.all_features;
            cargo.no_default_features = args.no_default_features;
            let workspace = Workspace::load(&cargo)?;
            let options = supervisor::RunOptions {
                services: args.services,
                packages: args.packages,
                cargo,
                watch: args.watch,
            };
            supervisor::run(workspace, options, shutdown_on_signal()).await
        }
        Command::Ps => {
            let workspace = Workspace::load(&cargo)?;
            let client = control::Client::find(&workspace.state_dir, cargo.manifest_path.as_deref())?;
            print_ps(&client.services().await?);
            println!(
                "\ninspector: http://{}/ (`cargo devmesh inspector` prints a login link)",
                client.addr()
            );
            Ok(())
        }
        Command::Inspector => {
            let workspace = Workspace::load(&cargo)?;
            let client = control::Client::find(&workspace.state_dir, cargo.manifest_path.as_deref())?;
            println!("{}", client.login_url().await?);
            Ok(())
        }
        Command::Restart {
            services,
            no_build,
            now,
        } => {
            let query = format!("?build={}&now={now}", !no_build);
            act(&cargo, &services, "restart", &query).await
        }
        Command::Stop { services } => act(&cargo, &services, "stop", "").await,
        Command::Start { services } => act(&cargo, &services, "start", "").await,
        Command::Logs {
            services,
            follow,
            since,
            lines,
        } => {
            let workspace = Workspace::load(&cargo)?;
            for name in &services {
                workspace.service(name)?;
            }
            let services = if services.is_empty() {
                workspace.services.keys().cloned().collect()
            } else {
                services
            };
            let options = logs::LogsOptions {
                services,
                follow,
                since,
                lines,
            };
            Ok(logs::show(&workspace.state_dir, options, shutdown_on_signal()).await?)
        }
        Command::Traffic {
            service,
            follow,
            har,
            jsonl,
            lines,
        } => {
            let workspace = Workspace::load(&cargo)?;
            if let Some(name) = &service {
                workspace.service(name)?;
            }
            let client = control::Client::find(&workspace.state_dir, cargo.manifest_path.as_deref())?;
            let format = match (har, jsonl) {
                (true, _) => traffic::Format::Har,
                (_, true) => traffic::Format::JsonLines,
                _ => traffic::Format::Table,
            };
            traffic::show(
                &client,
                service.as_deref(),
                format,
                (follow, lines),
                shutdown_on_signal(),
            )
            .await
        }
        Command::Replay {
            id,
            method,
            path,
            headers,
            body,
        } => {
            let workspace = Workspace::load(&cargo)?;
            let client = control::Client::find(&workspace.state_dir, cargo.manifest_path.as_deref())?;
            let edits = traffic::Edits {
                method,
                path,
                headers,
                body,
            };
            traffic::replay(&client, id, edits).await
        }
    }
}

/// Sends `action` to each service in turn, through the running supervisor.
async fn act(cargo: &CargoOptions, services: &[String], action: &str, query: &str) -> anyhow::Result<()> {
    let workspace = Workspace::load(cargo)?;
    for name in services {
        workspace.service(name)?;
    }
    let client = control::Client::find(&workspace.state_dir, cargo.manifest_path.as_deref())?;
    for name in services {
        let done = client
            .act(name, action, query)
            .await
            .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        println!("{name}: {done}");
    }
    Ok(())
}

fn print_ps(services: &[serde_json::Value]) {
    println!(
        "{:<20} {:<12} {:<22} {:>8} {:>8}  NOTE",
        "SERVICE", "STATUS", "FRONT", "PID", "RESTARTS"
    );
    for s in services {
        let text = |key: &str| s[key].as_str().unwrap_or("").to_owned();
        let pid = s["pid"].as_u64().map_or("-".to_owned(), |p| p.to_string());
        // Connections still open to an instance a restart replaced.
        let draining = match s["draining"].as_u64().unwrap_or(0) {
            0 => String::new(),
            open => format!("draining ({open} open) "),
        };
        println!(
            "{:<20} {:<12} {:<22} {:>8} {:>8}  {}",
            text("name"),
            text("status"),
            text("front"),
            pid,
            s["restarts"].as_u64().unwrap_or(0),
            draining + &text("note")
        );
    }
}

/// A token cancelled by the first Ctrl-C or SIGTERM; a second one exits at
/// once (services die with the supervisor: the watchdog ends them).
fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut interrupt), Ok(mut terminate)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate()))
        else {
            return;
        };
        for _ in 0..2 {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            if cancel.is_cancelled() {
                std::process::exit(130);
            }
            cancel.cancel();
        }
    });
    token
}
