//! A three-service mesh in a test, against the three binaries started by
//! hand: the shop's gateway, orders and payments, built already; the time
//! from nothing running to all three answering `/health`. By hand: spawn
//! each with its port and its peers' URLs in the environment, and poll
//! each `/health` every millisecond until it answers. The harness:
//! `Mesh::builder()…start()`, which also binds the front ports, starts the
//! inspector and waits for each service's readiness.
//!
//! Three harness figures: the first mesh of a process with nothing kept
//! (it asks cargo for the workspace's metadata and builds), the first
//! mesh of a process after that (as each test under nextest is: a
//! process a test, each with what the first kept), and the next meshes of
//! one process. Each first is a process of its own (this program again,
//! with `--first`). Rounds alternate; medians.
//!
//! Run: `cargo run --release -p devmesh-bench --bin harness`.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use devmesh_bench::{Guard, free_port, median_time, repo, run};
use devmesh_testing::Mesh;

const ROUNDS: usize = 15;

fn main() {
    let shop = repo().join("examples/shop");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let harness = || {
        runtime.block_on(async {
            let began = Instant::now();
            let mesh = Mesh::builder()
                .workspace(shop.join("Cargo.toml"))
                .services(["gateway"])
                .start()
                .await
                .expect("the mesh starts");
            let took = began.elapsed();
            drop(mesh);
            took
        })
    };
    if std::env::args().any(|a| a == "--first") {
        println!("{}", harness().as_nanos());
        return;
    }
    run(Command::new("cargo")
        .args(["build", "--quiet", "--manifest-path"])
        .arg(shop.join("Cargo.toml")));
    // Nothing kept: as after `cargo clean`, or a manifest changed.
    let kept = std::env::current_exe()
        .expect("this program's path")
        .parent()
        .expect("its folder")
        .join("devmesh-testing");
    let _ = std::fs::remove_dir_all(&kept);
    let cold = first_of_a_process();
    let (mut by_hand, mut firsts, mut next) = (Vec::new(), Vec::new(), Vec::new());
    harness();
    for _ in 0..ROUNDS {
        by_hand.push(start_by_hand(&shop));
        firsts.push(first_of_a_process());
        next.push(harness());
    }
    let hand = median_time(by_hand);
    let times = |d: Duration| format!("{d:>9.1?}  ({:.2}× by hand)", d.as_secs_f64() / hand.as_secs_f64());
    println!("three services (gateway, orders, payments), from nothing to all answering, {ROUNDS} rounds, medians:");
    println!("  by hand (spawn, poll /health each ms)              {hand:>9.1?}");
    println!(
        "  devmesh-testing, the first mesh of a process       {}  (a process a test, as under nextest)",
        times(median_time(firsts))
    );
    println!(
        "  devmesh-testing, the next meshes of a process      {}",
        times(median_time(next))
    );
    println!(
        "  the first mesh with nothing kept (once)            {}  (cargo metadata, and a build that finds all built)",
        times(cold)
    );
}

/// This program again, for one mesh: how long its start took.
fn first_of_a_process() -> Duration {
    let output = Command::new(std::env::current_exe().expect("this program's path"))
        .arg("--first")
        .stderr(Stdio::inherit())
        .output()
        .expect("the bench runs itself");
    let nanos: u64 = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("a first mesh's time, not {output:?}"));
    Duration::from_nanos(nanos)
}

/// Spawns payments, orders and gateway on ports of their own, each told
/// where the others are; the time until all three answer.
fn start_by_hand(shop: &std::path::Path) -> Duration {
    let ports = [free_port(), free_port(), free_port()];
    let url = |port: u16| format!("http://127.0.0.1:{port}");
    let began = Instant::now();
    let children: Vec<Guard> = ["payments", "orders", "gateway"]
        .iter()
        .zip(ports)
        .map(|(name, port)| {
            Guard(
                Command::new(shop.join("target/debug").join(name))
                    .env("PORT", port.to_string())
                    .env("DEVMESH_SERVICE", name)
                    .env("DEVMESH_PAYMENTS_URL", url(ports[0]))
                    .env("DEVMESH_ORDERS_URL", url(ports[1]))
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("the service starts"),
            )
        })
        .collect();
    for port in ports {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        while !healthy(addr) {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let took = began.elapsed();
    drop(children);
    took
}

fn healthy(addr: SocketAddr) -> bool {
    devmesh_bench::exchange(addr, "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .is_some_and(|answer| answer.starts_with("HTTP/1.1 200"))
}
