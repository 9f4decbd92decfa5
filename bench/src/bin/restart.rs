//! Restarts under load: a service is restarted 20 times while a closed-loop
//! HTTP load runs against its address; requests sent, failed and the longest
//! wait are printed for `cargo devmesh` and for honcho (a Procfile runner,
//! which can only stop and start everything) in the same run, followed by
//! the supervisor's overhead: restart-to-answering against a bare start, and
//! its resident memory with ten services.
//!
//! Run: `cargo run --release -p devmesh-bench --bin restart`
//! (installs honcho with pip when it is missing).

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use devmesh_bench::{
    Api, Built, Load, LoadReport, build, exchange, free_port, front_port, median_time, rss_kib, run, signal,
    wait_until_answers,
};

const RESTARTS: usize = 20;
const WORKERS: usize = 4;
/// Load runs this long between restarts.
const BETWEEN: Duration = Duration::from_millis(250);

#[tokio::main]
async fn main() {
    let Built {
        supervisor,
        payments,
        shop,
    } = build();
    ensure_honcho();

    println!("restarting under cargo devmesh…");
    let (devmesh, under_load, quiet) = under_devmesh(&supervisor, &shop).await;
    println!("restarting under honcho…");
    let honcho = under_honcho(&payments).await;
    println!("timing bare starts and the supervisor's memory…");
    let bare = bare_starts(&payments).await;
    let rss = supervisor_rss(&supervisor, &shop).await;

    println!("\n{RESTARTS} restarts of `payments` under load ({WORKERS} keep-alive clients, GET /health):");
    println!(
        "{:<16} {:>10} {:>10} {:>14} {:>22}",
        "", "sent", "failed", "longest wait", "longest without answer"
    );
    for (name, report) in [("cargo devmesh", &devmesh), ("honcho", &honcho)] {
        println!(
            "{name:<16} {:>10} {:>10} {:>14.1?} {:>22.1?}",
            report.sent, report.failed, report.longest, report.longest_gap
        );
    }
    let (quiet, bare) = (median_time(quiet), median_time(bare));
    println!(
        "\nrestart (already built) to answering, no load, median of {RESTARTS}: {quiet:.1?} ({:.2}× the bare start)",
        quiet.as_secs_f64() / bare.as_secs_f64()
    );
    println!("bare binary start to answering, no load, median of {RESTARTS}:          {bare:.1?}");
    println!(
        "restart (already built) to answering, under the load above:     {:.1?}",
        median_time(under_load)
    );
    println!("supervisor RSS with 10 services running:               {} KiB", rss);
}

/// Runs `payments` under `cargo devmesh run` and restarts it through the API.
/// Returns the load's report and the restarts' times under load and without.
async fn under_devmesh(supervisor: &Path, shop: &Path) -> (LoadReport, Vec<Duration>, Vec<Duration>) {
    let state = tempfile::tempdir().expect("a temp dir");
    let mut child = supervise(supervisor, shop, state.path(), &["payments"], &[]);
    let front = front_port(state.path(), "payments").await;
    wait_until_answers(front, "/health").await;
    let api = Api::read(state.path());
    let load = Load::start(front, "/health", WORKERS);
    let mut times = Vec::new();
    for _ in 0..RESTARTS {
        tokio::time::sleep(BETWEEN).await;
        let began = Instant::now();
        restart(&api, "payments").await;
        times.push(began.elapsed());
    }
    tokio::time::sleep(BETWEEN).await;
    let report = load.stop().await;
    // Like with like: the bare start is timed with no load, so is this.
    // One restart at a time, as a person makes them: the previous old
    // instance has exited before the next restart. Timed as the bare start
    // is, with plain blocking sockets, so that neither figure carries the
    // async runtime's wake-ups.
    let mut quiet = Vec::new();
    for _ in 0..RESTARTS {
        tokio::time::sleep(BETWEEN).await;
        let began = Instant::now();
        let answer = api.call("POST", "/api/services/payments/restart?build=false");
        quiet.push(began.elapsed());
        assert!(answer.starts_with("HTTP/1.1 200"), "a restart failed: {answer}");
    }
    interrupt(&mut child);
    (report, times, quiet)
}

/// Runs `payments` under honcho and restarts it the only way honcho can.
async fn under_honcho(payments: &Path) -> LoadReport {
    let dir = tempfile::tempdir().expect("a temp dir");
    let procfile = dir.path().join("Procfile");
    std::fs::write(&procfile, format!("payments: exec {}\n", payments.display())).expect("a Procfile");
    let port = free_port();
    let start = || {
        Command::new("honcho")
            .args(["start", "--no-colour", "-f"])
            .arg(&procfile)
            .args(["-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("honcho starts")
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut honcho = start();
    wait_until_answers(addr, "/health").await;
    let load = Load::start(addr, "/health", WORKERS);
    for _ in 0..RESTARTS {
        tokio::time::sleep(BETWEEN).await;
        terminate(&mut honcho);
        honcho = start();
    }
    wait_until_answers(addr, "/health").await;
    tokio::time::sleep(BETWEEN).await;
    let report = load.stop().await;
    terminate(&mut honcho);
    report
}

/// How long the bare binary takes from spawn to answering.
async fn bare_starts(payments: &Path) -> Vec<Duration> {
    let mut times = Vec::new();
    for _ in 0..RESTARTS {
        // Spaced as the restarts are: a machine that has idled a moment
        // wakes more slowly than one busy starting things back to back.
        tokio::time::sleep(BETWEEN).await;
        let port = free_port();
        let began = Instant::now();
        let mut child = Command::new(payments)
            .env("PORT", port.to_string())
            .stdout(Stdio::null())
            .spawn()
            .expect("payments starts");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let health = format!("GET /health HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
        while !exchange(addr, &health).is_some_and(|a| a.starts_with("HTTP/1.1 200")) {
            std::thread::sleep(Duration::from_micros(100));
        }
        times.push(began.elapsed());
        terminate(&mut child);
    }
    times
}

/// The supervisor's resident memory with ten instances of `payments`.
async fn supervisor_rss(supervisor: &Path, shop: &Path) -> u64 {
    let state = tempfile::tempdir().expect("a temp dir");
    let names: Vec<String> = (0..10).map(|i| format!("p{i}")).collect();
    let env: Vec<(String, String)> = names
        .iter()
        .map(|n| {
            (
                format!("DEVMESH_SERVICES__{}__PACKAGE", n.to_uppercase()),
                "payments".to_owned(),
            )
        })
        .collect();
    let args: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut child = supervise(supervisor, shop, state.path(), &args, &env);
    for name in &names {
        wait_until_answers(front_port(state.path(), name).await, "/health").await;
    }
    let rss = rss_kib(child.id());
    interrupt(&mut child);
    rss
}

fn supervise(supervisor: &Path, shop: &Path, state: &Path, services: &[&str], env: &[(String, String)]) -> Child {
    Command::new(supervisor)
        .args(["run", "--release", "--manifest-path"])
        .arg(shop)
        .args(services)
        .env("DEVMESH_STATE_DIR", state)
        .env("DEVMESH_RUN__PORTS", "26500-26599")
        .envs(env.iter().cloned())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the supervisor starts")
}

/// Restarts `service` through the API, off the runtime's threads: the load
/// runs on them.
async fn restart(api: &Api, service: &str) {
    let (api, path) = (api.clone(), format!("/api/services/{service}/restart?build=false"));
    let answer = tokio::task::spawn_blocking(move || api.call("POST", &path))
        .await
        .expect("the restart call runs");
    assert!(answer.starts_with("HTTP/1.1 200"), "restart failed: {answer}");
}

fn interrupt(child: &mut Child) {
    signal(child, libc::SIGINT);
}

fn terminate(child: &mut Child) {
    signal(child, libc::SIGTERM);
}

fn ensure_honcho() {
    let found = Command::new("honcho")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        println!("installing honcho with pip…");
        run(Command::new("python3").args(["-m", "pip", "install", "--quiet", "honcho"]));
    }
}
