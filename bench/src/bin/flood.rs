//! A service that prints without end (`yes`) beside the shop's `payments`:
//! how long `cargo devmesh ps`, `GET /api/services`, a restart and a DNS
//! answer take while it floods and while it is stopped, in the same run,
//! and the supervisor's CPU during each. Logs must never share the
//! control plane's time: each should stay within 2× of its quiet time.
//!
//! Run: `cargo run --release -p devmesh-bench --bin flood` (on a quiet machine).

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use devmesh::dns::{A, Question};
use devmesh_bench::{Api, Built, Guard, build, cpu_ticks, exchange, front_port, median_time};

/// Times each control command is taken, in each state.
const ROUNDS: usize = 10;

#[tokio::main]
async fn main() {
    let Built { supervisor, shop, .. } = build();
    let state = tempfile::tempdir().expect("a temp dir");
    // A service the shop does not have, added for the run and its CLI.
    let chatty = (
        "DEVMESH_SERVICES__CHATTY__COMMAND",
        "yes 'DEBUG chatty: a line a debug log prints' & exec python3 -m http.server $PORT --bind 127.0.0.1",
    );
    let run = Guard(
        Command::new(&supervisor)
            .args(["run", "--release", "payments", "chatty", "--manifest-path"])
            .arg(&shop)
            .env("DEVMESH_STATE_DIR", state.path())
            .env("DEVMESH_RUN__PORTS", "26900-26999")
            .env(chatty.0, chatty.1)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the supervisor starts"),
    );
    let payments = front_port(state.path(), "payments").await;
    devmesh_bench::wait_until_answers(payments, "/health").await;
    devmesh_bench::wait_until_answers(front_port(state.path(), "chatty").await, "/").await;
    let api = Api::read(state.path());
    let dns = dns_port(state.path());
    let cli = |args: &[&str]| {
        let output = Command::new(&supervisor)
            .args(args)
            .arg("--manifest-path")
            .arg(&shop)
            .env("DEVMESH_STATE_DIR", state.path())
            .env(chatty.0, chatty.1)
            .output()
            .expect("the CLI runs");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    };

    println!("timing with the flood…");
    let flooded = measure(&cli, &api, dns, run.0.id());
    cli(&["stop", "chatty"]);
    println!("timing without it…");
    let quiet = measure(&cli, &api, dns, run.0.id());

    println!("\nmedian of {ROUNDS}, a `yes` service running (flood) and stopped (quiet):");
    println!("{:<24} {:>12} {:>12} {:>8}", "", "flood", "quiet", "ratio");
    for (name, flood, quiet) in [
        ("cargo devmesh ps", flooded.ps, quiet.ps),
        ("GET /api/services", flooded.services, quiet.services),
        ("restart payments", flooded.restart, quiet.restart),
        ("a DNS answer", flooded.dns, quiet.dns),
    ] {
        println!(
            "{name:<24} {flood:>12.2?} {quiet:>12.2?} {:>7.2}×",
            flood.as_secs_f64() / quiet.as_secs_f64()
        );
    }
    println!(
        "supervisor CPU: {:.0}% of a core with the flood, {:.0}% without",
        flooded.cpu * 100.0,
        quiet.cpu * 100.0
    );
}

/// Medians of each control command, and the supervisor's share of a core
/// while they ran.
struct Timings {
    ps: Duration,
    services: Duration,
    restart: Duration,
    dns: Duration,
    cpu: f64,
}

fn measure(cli: &dyn Fn(&[&str]), api: &Api, dns: SocketAddr, supervisor: u32) -> Timings {
    let began = (Instant::now(), cpu_ticks(supervisor));
    let timed = |run: &dyn Fn()| {
        median_time(
            (0..ROUNDS)
                .map(|_| {
                    let start = Instant::now();
                    run();
                    start.elapsed()
                })
                .collect(),
        )
    };
    let ps = timed(&|| cli(&["ps"]));
    let services = timed(&|| {
        let answer = exchange(api.addr, &api.request("GET", "/api/services")).expect("the API answers");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    });
    let restart = timed(&|| cli(&["restart", "--no-build", "payments"]));
    let dns = timed(&|| ask(dns));
    // SAFETY: sysconf has no preconditions.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let used = (cpu_ticks(supervisor) - began.1) as f64 / ticks_per_second;
    Timings {
        ps,
        services,
        restart,
        dns,
        cpu: used / began.0.elapsed().as_secs_f64(),
    }
}

/// One A query for `payments.devmesh.`, answered.
fn ask(server: SocketAddr) {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("a UDP socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("a timeout");
    socket
        .send_to(&Question::new(7, "payments.devmesh.", A).to_bytes(), server)
        .expect("the query goes");
    let mut answer = [0u8; 512];
    let (len, _) = socket.recv_from(&mut answer).expect("a DNS answer");
    assert!(len > 12 && answer[..2] == [0, 7], "an answer to the query");
}

fn dns_port(state: &Path) -> SocketAddr {
    let ports: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("ports.json")).expect("ports.json")).expect("JSON");
    let port = ports["@dns"].as_u64().expect("the DNS server's port") as u16;
    SocketAddr::from(([127, 0, 0, 1], port))
}
