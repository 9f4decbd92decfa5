//! Throughput through a front port with capture on, against the service
//! directly and against nginx as a keep-alive reverse proxy in front of the
//! same service, with the same load generator (wrk) in one run. The three
//! take turns for several rounds, in an order that rotates so that none
//! always follows the same one, and the medians are compared, so a noisy
//! moment on a shared machine does not decide the outcome.
//!
//! Run: `cargo run --release -p devmesh-bench --bin proxy`
//! (needs `wrk` and `nginx`: `apt-get install wrk nginx-light`).

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use devmesh_bench::{Built, build, free_port, front_port, wait_until_answers};

const DURATION: &str = "4s";
const ROUNDS: usize = 9;
const THREADS: &str = "1";
const CONNECTIONS: &str = "16";

#[tokio::main]
async fn main() {
    for tool in ["wrk", "nginx"] {
        let found = Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output();
        assert!(
            found.is_ok_and(|o| o.status.success()),
            "`{tool}` is needed (hint: apt-get install wrk nginx-light)"
        );
    }
    let Built {
        supervisor,
        payments,
        shop,
    } = build();

    let direct_port = free_port();
    let mut service = Command::new(&payments)
        .env("PORT", direct_port.to_string())
        .stdout(Stdio::null())
        .spawn()
        .expect("payments starts");
    let direct = SocketAddr::from(([127, 0, 0, 1], direct_port));
    wait_until_answers(direct, "/health").await;

    let state = tempfile::tempdir().expect("a temp dir");
    let mut supervisor = Command::new(&supervisor)
        .args(["run", "--release", "payments", "--manifest-path"])
        .arg(&shop)
        .env("DEVMESH_STATE_DIR", state.path())
        .env("DEVMESH_RUN__PORTS", "26600-26699")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the supervisor starts");
    let front = front_port(state.path(), "payments").await;
    wait_until_answers(front, "/health").await;

    let nginx_dir = tempfile::tempdir().expect("a temp dir");
    let nginx_port = free_port();
    let mut nginx = start_nginx(nginx_dir.path(), nginx_port, direct_port);
    let proxied = SocketAddr::from(([127, 0, 0, 1], nginx_port));
    wait_until_answers(proxied, "/health").await;

    println!("wrk -t{THREADS} -c{CONNECTIONS} -d{DURATION} GET /health, {ROUNDS} rounds taking turns in rotation:");
    let targets = [
        ("service directly", direct),
        ("cargo devmesh front (capture on)", front),
        ("nginx reverse proxy (keep-alive)", proxied),
    ];
    let mut runs: Vec<Vec<Figures>> = targets.iter().map(|_| Vec::new()).collect();
    for round in 0..ROUNDS {
        for turn in 0..targets.len() {
            let which = (round + turn) % targets.len();
            let (name, addr) = targets[which];
            let figures = wrk(addr);
            println!(
                "  round {}  {name:<34} {:>9.0} req/s  p99 {:>9.2?}",
                round + 1,
                figures.rps,
                figures.p99
            );
            runs[which].push(figures);
        }
    }
    let medians: Vec<Figures> = runs.into_iter().map(median).collect();
    let direct = &medians[0];
    println!(
        "\nmedians of {ROUNDS}:\n{:<34} {:>12} {:>10} {:>10} {:>10}",
        "", "requests/s", "× direct", "p99", "× direct"
    );
    for ((name, _), figures) in targets.iter().zip(&medians) {
        println!(
            "{name:<34} {:>12.0} {:>10.2} {:>10.2?} {:>10.2}",
            figures.rps,
            figures.rps / direct.rps,
            figures.p99,
            figures.p99.as_secs_f64() / direct.p99.as_secs_f64()
        );
    }
    let (devmesh, nginx_figures) = (&medians[1], &medians[2]);
    println!(
        "\ncargo devmesh against nginx: {:.2}× the throughput, {:.2}× the p99",
        devmesh.rps / nginx_figures.rps,
        devmesh.p99.as_secs_f64() / nginx_figures.p99.as_secs_f64()
    );
    let captured = captured(state.path());
    println!("\nexchanges the inspector held at the end: {captured} (bounded by inspector.memory)");

    for child in [&mut supervisor, &mut nginx, &mut service] {
        // SAFETY: signalling our own children.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let _ = child.wait();
    }
}

struct Figures {
    rps: f64,
    p99: Duration,
}

/// The median rate and the median p99 of some runs (each on its own).
fn median(mut runs: Vec<Figures>) -> Figures {
    let middle = runs.len() / 2;
    runs.sort_by(|a, b| a.rps.total_cmp(&b.rps));
    let rps = runs[middle].rps;
    runs.sort_by_key(|f| f.p99);
    Figures {
        rps,
        p99: runs[middle].p99,
    }
}

fn wrk(addr: SocketAddr) -> Figures {
    let output = Command::new("wrk")
        .args(["-t", THREADS, "-c", CONNECTIONS, "-d", DURATION, "--latency"])
        .arg(format!("http://{addr}/health"))
        .output()
        .expect("wrk runs");
    let text = String::from_utf8_lossy(&output.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("wrk printed no rate:\n{text}"));
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .and_then(|v| parse_latency(v.trim()))
        .unwrap_or_else(|| panic!("wrk printed no p99:\n{text}"));
    let errors = text
        .lines()
        .find(|l| l.contains("Non-2xx") || l.contains("Socket errors"));
    if let Some(errors) = errors {
        println!("  {addr}: {}", errors.trim());
    }
    Figures { rps, p99 }
}

/// `1.23ms`, `456.00us`, `1.02s`.
fn parse_latency(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let seconds = match unit {
        "us" => number / 1e6,
        "ms" => number / 1e3,
        "s" => number,
        _ => return None,
    };
    Some(Duration::from_secs_f64(seconds))
}

fn start_nginx(dir: &Path, port: u16, upstream: u16) -> Child {
    devmesh_bench::start_nginx(
        dir,
        &format!(
            "  upstream service {{ server 127.0.0.1:{upstream}; keepalive 32; }}\n\
             server {{\n    listen 127.0.0.1:{port};\n    location / {{\n      proxy_pass http://service;\n\
                 proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n    }}\n  }}"
        ),
    )
}

/// How many exchanges the inspector holds now.
fn captured(state: &Path) -> usize {
    let answer = devmesh_bench::Api::read(state).call("GET", "/api/traffic?limit=1000000");
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    serde_json::from_str::<Vec<serde_json::Value>>(body).map_or(0, |v| v.len())
}
