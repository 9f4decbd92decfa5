//! A three-service mesh in a test, against the three binaries started by
//! hand: the shop's gateway, orders and payments, built already; the time
//! from nothing running to all three answering `/health`. By hand: spawn
//! each with its port and its peers' URLs in the environment, and poll
//! each `/health` every millisecond until it answers. The harness:
//! `Mesh::builder()…start()`, which also binds the front ports, starts the
//! inspector and waits for each service's readiness. Rounds alternate;
//! medians.
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
    run(Command::new("cargo")
        .args(["build", "--quiet", "--manifest-path"])
        .arg(shop.join("Cargo.toml")));
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
    // The first mesh of a process also asks cargo whether the binaries
    // are built (each test process under nextest does).
    let first = harness();
    let mut by_hand = Vec::new();
    let mut in_a_test = Vec::new();
    for _ in 0..ROUNDS {
        by_hand.push(start_by_hand(&shop));
        in_a_test.push(harness());
    }
    let (hand, test) = (median_time(by_hand), median_time(in_a_test));
    println!("three services (gateway, orders, payments), from nothing to all answering, {ROUNDS} rounds, medians:");
    println!("  by hand (spawn, poll /health each ms)  {hand:>9.1?}");
    println!(
        "  devmesh-testing Mesh::start           {test:>9.1?}  ({:.2}× by hand)",
        test.as_secs_f64() / hand.as_secs_f64()
    );
    println!(
        "  the first mesh of a process           {first:>9.1?}  ({:.2}× by hand; it also asks cargo whether the binaries are built)",
        first.as_secs_f64() / hand.as_secs_f64()
    );
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
