//! `cargo devmesh`: the command line, a front door to the library's
//! [`Mesh`](cargo_devmesh::Mesh). `run` turns arguments into a plan, starts
//! the mesh with its output on the terminal, and shuts it down on Ctrl-C;
//! the other commands talk to a running mesh through its API.
//!
//! - `cli`: the arguments;
//! - `traffic`: `traffic` and `replay`, the inspector in a terminal.

mod cli;
mod traffic;

use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;

use cargo_devmesh::control::ServiceView;
use cargo_devmesh::logs::{self, Echo};
use cargo_devmesh::workspace::{CargoOptions, Workspace};
use cargo_devmesh::{Mesh, Plan, Traffic, control, errors};
use cli::{Cli, Command};

fn main() -> ExitCode {
    // Before anything opens a descriptor: see `supervisor::process`.
    cargo_devmesh::supervisor::process::reserve_listen_fd();
    // `cargo devmesh x` runs `cargo-devmesh devmesh x`; the alias in
    // `.cargo/config.toml` runs `cargo-devmesh x`. Accept both.
    let mut args: Vec<_> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "devmesh") {
        args.remove(1);
    }
    let cli = Cli::parse_from(args);
    // A command whose output is piped to `head` ends quietly when the pipe
    // closes, as other tools do; `run` and `relay` keep running.
    if !matches!(cli.command, Some(Command::Run(_) | Command::Relay { .. })) {
        // SAFETY: the default action for SIGPIPE, set before any thread.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
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
            let usage = e.downcast_ref::<errors::PlanError>().is_some()
                || e.downcast_ref::<cargo_devmesh::tunnel::relay::ConfigError>().is_some();
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
            let plan = Plan {
                workspace: Workspace::load(&cargo)?,
                services: args.services,
                packages: args.packages,
                cargo,
                watch: args.watch,
                echo: Echo::Terminal,
                isolated: false,
                prebuilt: None,
                start_together: false,
            };
            run(plan).await
        }
        Command::Routes => {
            let workspace = Workspace::load(&cargo)?;
            let Some(config) = workspace.config.remote.etcd.clone() else {
                anyhow::bail!(
                    "`{}` has no `[remote.etcd]`, where routes are (hint: see \"Sharing a sandbox\" in the README)",
                    workspace.config_path.display()
                );
            };
            let listed = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<(String, String)>> {
                use devmesh::remote::Backend as _;
                let etcd = devmesh::remote::Etcd::routes(&config)?;
                if !etcd.first_read(std::time::Duration::from_secs(3)) {
                    anyhow::bail!("{} does not answer", etcd.describe());
                }
                Ok(etcd
                    .names()
                    .into_iter()
                    .filter_map(|name| Some((name.clone(), etcd.lookup(&name)?.url().to_owned())))
                    .collect())
            })
            .await??;
            if listed.is_empty() {
                println!("no routes: every request in the sandbox goes to its own copies");
            }
            for (name, url) in listed {
                let (service, route) = name.split_once('/').unwrap_or((name.as_str(), "?"));
                println!("{service}  route `{route}` → {url}");
            }
            Ok(())
        }
        Command::Ps => {
            let workspace = Workspace::load(&cargo)?;
            let client = control::Client::find(&workspace.state_dir, cargo.manifest_path.as_deref())?;
            print_ps(&client.services().await?);
            let tunnel = client.tunnel().await?;
            if !tunnel.relay.is_empty() {
                let state = match (&tunnel.connected, &tunnel.problem) {
                    (true, _) => "connected".to_owned(),
                    (false, Some(why)) => format!("NOT CONNECTED: {why}"),
                    (false, None) => "connecting".to_owned(),
                };
                println!("\ntunnel to {}: {state}", tunnel.relay);
                for (service, url) in &tunnel.urls {
                    println!("  {service} at {url}");
                }
            }
            print_routes(&client.routes().await?);
            let backends = client.backends().await?;
            if !backends.is_empty() {
                println!("\nremote backends:");
            }
            for backend in backends {
                let names = match backend.names.as_slice() {
                    [] => "knows no service".to_owned(),
                    names => names.join(", "),
                };
                let state = backend.stale.map_or_else(String::new, |why| format!(" — STALE: {why}"));
                println!("  {}: {names}{state}", backend.place);
            }
            println!(
                "\ninspector: http://{}/ (`cargo devmesh inspector` prints a login link)",
                client.addr()
            );
            let ports = std::fs::read(workspace.state_dir.join("ports.json"))
                .ok()
                .and_then(|p| serde_json::from_slice::<serde_json::Value>(&p).ok())
                .unwrap_or_default();
            if let Some(port) = ports["@dns"].as_u64() {
                println!(
                    "dns: 127.0.0.1:{port} (`dig @127.0.0.1 -p {port} _<svc>._tcp.devmesh SRV`; services get it as DEVMESH_DNS)"
                );
            }
            if let Some(port) = ports["@otlp"].as_u64() {
                println!(
                    "otlp: http://127.0.0.1:{port} (services get it as OTEL_EXPORTER_OTLP_ENDPOINT; what they send is on the page)"
                );
                // A service's own setting wins over devmesh's.
                for (name, spec) in &workspace.services {
                    let own: Vec<&str> = spec
                        .env
                        .keys()
                        .map(String::as_str)
                        .filter(|key| cargo_devmesh::telemetry::VARIABLES.contains(key))
                        .collect();
                    if !own.is_empty() {
                        println!("  {name}: its own {} (devmesh.toml) wins", own.join(", "));
                    }
                }
            }
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
        Command::Relay { config } => cargo_devmesh::tunnel::relay::run(&config).await,
        Command::Mode { service, mode } => {
            let workspace = Workspace::load(&cargo)?;
            let client = control::Client::find(&workspace.state_dir, cargo.manifest_path.as_deref())?;
            // A refusal names the service itself.
            let set = client.set_mode(&service, &mode).await?;
            println!(
                "{service}: mode {}, traffic goes {}",
                set.mode,
                traffic_words(set.traffic)
            );
            Ok(())
        }
        Command::Start { services } => act(&cargo, &services, "start", "").await,
        Command::Logs {
            services,
            follow,
            since,
            lines,
            trace,
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
                trace,
            };
            Ok(logs::show(&workspace.state_dir, options, shutdown_on_signal()).await?)
        }
        Command::Traffic {
            service,
            follow,
            har,
            jsonl,
            lines,
            as_test,
            stub,
            print,
        } => {
            let workspace = Workspace::load(&cargo)?;
            if let Some(name) = &service {
                workspace.service(name)?;
            }
            let client = control::Client::find(&workspace.state_dir, cargo.manifest_path.as_deref())?;
            if let Some(id) = as_test {
                return traffic::as_test(&client, &id, (&stub, print), cargo.manifest_path.as_deref()).await;
            }
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

/// Runs the mesh of `plan` until Ctrl-C or SIGTERM.
async fn run(plan: Plan) -> anyhow::Result<()> {
    let shutdown = shutdown_on_signal();
    let mesh = Mesh::start(plan).await?;
    let api = mesh.api();
    mesh.logs().note(format!(
        "inspector on http://{}/ (log in once with {}; `cargo devmesh inspector` prints a new link)",
        api.addr, api.first_login
    ));
    shutdown.cancelled().await;
    mesh.shutdown().await
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

fn print_ps(services: &[ServiceView]) {
    println!(
        "{:<20} {:<12} {:<22} {:>8} {:>8} {:>7}  {:<6} {:<8} NOTE",
        "SERVICE", "STATUS", "FRONT", "PID", "RESTARTS", "CRASHES", "MODE", "TRAFFIC"
    );
    for view in services {
        let s = &view.state;
        let pid = s.pid.map_or("-".to_owned(), |p| p.to_string());
        // Connections still open to an instance a restart replaced.
        let draining = match s.draining {
            0 => String::new(),
            open => format!("draining ({open} open) "),
        };
        let traffic = match (view.traffic, &view.remote) {
            (Traffic::Remote, Some(url)) if view.via_relay => format!("remote via relay → {url} "),
            (Traffic::Remote, Some(url)) => format!("remote → {url} "),
            (traffic, _) => format!("{:<8} ", traffic_words(traffic)),
        };
        println!(
            "{:<20} {:<12} {:<22} {:>8} {:>8} {:>7}  {:<6} {traffic}{draining}{}",
            s.name,
            s.status.to_string(),
            s.front.to_string(),
            pid,
            s.restarts,
            s.crashes,
            view.mode.to_string(),
            s.note.as_deref().unwrap_or("")
        );
    }
}

/// Where a front port sends traffic, in a word.
fn traffic_words(traffic: Traffic) -> &'static str {
    match traffic {
        Traffic::Local => "local",
        Traffic::Remote => "remote",
        Traffic::Waiting => "waiting",
    }
}

/// A token cancelled by the first Ctrl-C, SIGTERM or SIGHUP (the terminal
/// was closed: a clean stop, so that the registry and `control.json` do not
/// outlive the run); a second one exits at once (services die with the
/// supervisor: the watchdog ends them).
fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut interrupt), Ok(mut terminate), Ok(mut hangup)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) else {
            return;
        };
        for _ in 0..2 {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
                _ = hangup.recv() => {}
            }
            if cancel.is_cancelled() {
                std::process::exit(130);
            }
            cancel.cancel();
        }
    });
    token
}

/// What `ps` says of routes: developers' copies of the services here, and
/// this developer's routed and shared services.
fn print_routes(routes: &control::RoutesView) {
    if routes.copies.is_empty() && routes.own.is_empty() && routes.shared.is_empty() {
        return;
    }
    println!("\nroutes:");
    for (service, route, url) in &routes.copies {
        println!("  {service}: requests with route `{route}` go to {url}");
    }
    for (service, route) in &routes.own {
        println!(
            "  {service}: this copy serves route `{route}` (requests from here carry `baggage: devmesh-route={route}`)"
        );
    }
    for service in &routes.shared {
        println!(
            "  {service}: shared: every caller in the sandbox reaches this copy (`route = true` keeps it to your requests)"
        );
    }
}
