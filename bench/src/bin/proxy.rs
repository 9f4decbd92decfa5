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
use std::process::{Child, Command};

use devmesh_bench::{
    build, free_port, front_port, payments_alone, rotate, run_payments, verdict, wait_until_answers, wrk,
};

const DURATION: &str = "4s";
const ROUNDS: usize = 9;
const CONNECTIONS: &str = "16";
/// The target: the front port, capture on, this much nginx's requests/s.
const MIN_VS_NGINX: f64 = 1.2;

#[tokio::main]
async fn main() {
    for tool in ["wrk", "nginx"] {
        let found = Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output();
        assert!(
            found.is_ok_and(|o| o.status.success()),
            "`{tool}` is needed (hint: apt-get install wrk nginx-light)"
        );
    }
    let built = build();
    let (mut service, direct) = payments_alone(&built.payments).await;
    let direct_port = direct.port();
    let state = tempfile::tempdir().expect("a temp dir");
    let mut supervisor = run_payments(&built, state.path(), "26600-26699", &[]);
    let front = front_port(state.path(), "payments").await;
    wait_until_answers(front, "/health").await;

    let nginx_dir = tempfile::tempdir().expect("a temp dir");
    let nginx_port = free_port();
    let mut nginx = start_nginx(nginx_dir.path(), nginx_port, direct_port);
    let proxied = SocketAddr::from(([127, 0, 0, 1], nginx_port));
    wait_until_answers(proxied, "/health").await;

    println!("wrk -t1 -c{CONNECTIONS} -d{DURATION} GET /health, {ROUNDS} rounds taking turns in rotation:");
    let targets = [
        ("service directly", direct),
        ("cargo devmesh front (capture on)", front),
        ("nginx reverse proxy (keep-alive)", proxied),
    ];
    let medians = rotate(&targets, ROUNDS, |addr| wrk(addr, "/health", DURATION, CONNECTIONS));
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
    let rate = devmesh.rps / nginx_figures.rps;
    let p99 = devmesh.p99.as_secs_f64() / nginx_figures.p99.as_secs_f64();
    println!(
        "\ntargets: requests/s ≥ {MIN_VS_NGINX}× nginx's: {} ({rate:.2}×); p99 ≤ nginx's: {} ({p99:.2}×)",
        verdict(rate >= MIN_VS_NGINX),
        verdict(p99 <= 1.0)
    );
    devmesh_bench::profile("the supervisor, wrk on its front port", &[supervisor.id()], || {
        wrk(front, "/health", DURATION, CONNECTIONS);
    });
    let captured = captured(state.path());
    println!("\nexchanges the inspector held at the end: {captured} (bounded by inspector.memory)");

    for child in [&mut supervisor, &mut nginx, &mut service] {
        // SAFETY: signalling our own children.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let _ = child.wait();
    }
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
