//! Remote services, in one run:
//! - `discover` of a remote service, answered from the DNS SRV backend's
//!   memory, against `std::env::var`;
//! - a DNS SRV question to the supervisor's DNS server, and a get from
//!   etcd (`etcd-server`, a member started here), each a round trip;
//! - requests/s and p99 through a remote service's front port, against
//!   calling the remote directly (the shop's `payments`, run apart as the
//!   "sandbox"; wrk, rounds in rotation, medians).
//!
//! Run: `cargo run --release -p devmesh-bench --bin remote`
//! (needs `wrk` and `etcd`: `apt-get install wrk etcd-server`).

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use devmesh::dns::{Question, Response, SRV};
use devmesh::remote::Backend as _;
use devmesh_bench::{build, front_port, payments_alone, rotate, run_payments, wait_until_answers, wrk};

const ROUNDS: usize = 5;
const DURATION: &str = "4s";
const CONNECTIONS: &str = "16";

#[tokio::main]
async fn main() {
    let built = build();
    // The "sandbox": payments run apart.
    let (mut remote, direct) = payments_alone(&built.payments).await;
    // The supervisor, with payments only in the sandbox.
    let state = tempfile::tempdir().expect("a temp dir");
    let env = [
        ("DEVMESH_REMOTE__STATIC__PAYMENTS", format!("http://{direct}")),
        ("DEVMESH_SERVICES__PAYMENTS__MODE", "remote".to_owned()),
    ];
    let mut run = run_payments(&built, state.path(), "26800-26899", &env);
    let front = front_port(state.path(), "payments").await;
    wait_until_answers(front, "/health").await;
    let dns: SocketAddr = {
        let ports: serde_json::Value =
            serde_json::from_slice(&std::fs::read(state.path().join("ports.json")).expect("ports.json")).expect("JSON");
        SocketAddr::from(([127, 0, 0, 1], ports["@dns"].as_u64().expect("a DNS port") as u16))
    };

    println!("\ndiscover a remote service (DNS SRV backend, answered from memory), 1,000,000 lookups:");
    let config: devmesh::config::Config = figment_config(&format!(
        "[remote.dns]\nserver = \"{dns}\"\ndomain = \"devmesh\"\nservices = [\"payments\"]"
    ));
    let backend = devmesh::remote::DnsSrv::new(config.remote.dns.as_ref().expect("[remote.dns]")).expect("a backend");
    assert!(
        backend.lookup("payments").is_some(),
        "the supervisor's DNS knows payments"
    );
    let resolver = devmesh::Resolver::builder().backend(backend).build();
    // SAFETY: set before any other thread reads the environment.
    unsafe { std::env::set_var("DEVMESH_BENCH_VAR", "http://127.0.0.1:1") };
    let per = |began: Instant, n: u32| began.elapsed() / n;
    let n = 1_000_000;
    let began = Instant::now();
    for _ in 0..n {
        std::hint::black_box(resolver.discover(std::hint::black_box("payments")).ok());
    }
    let lookup = per(began, n);
    let began = Instant::now();
    for _ in 0..n {
        std::hint::black_box(std::env::var(std::hint::black_box("DEVMESH_BENCH_VAR")).ok());
    }
    let env = per(began, n);
    println!(
        "  discover (cached) {lookup:>9.1?}   std::env::var {env:>9.1?}   ({:.2}×)",
        lookup.as_secs_f64() / env.as_secs_f64()
    );

    println!("\nround trips, 2,000 each (median, p99):");
    let socket = UdpSocket::bind("127.0.0.1:0").expect("a socket");
    socket.connect(dns).expect("connects");
    socket
        .set_read_timeout(Some(Duration::from_secs(1)))
        .expect("a timeout");
    let srv = timings(2000, |i| {
        socket
            .send(&Question::new(i as u16, "_payments._tcp.devmesh", SRV).to_bytes())
            .expect("sent");
        let mut buf = [0u8; 512];
        let len = socket.recv(&mut buf).expect("an answer");
        assert!(!Response::parse(&buf[..len]).expect("a response").answers.is_empty());
    });
    println!("  DNS SRV to the supervisor   {:>9.1?} {:>9.1?}", srv.0, srv.1);
    match etcd_gets() {
        Some((median, p99)) => println!("  etcd get (JSON gateway)     {median:>9.1?} {p99:>9.1?}"),
        None => println!("  etcd get: `etcd` is not installed (apt-get install etcd-server)"),
    }

    println!("\nGET /health, wrk -t1 -c{CONNECTIONS} -d{DURATION}, {ROUNDS} rounds in rotation:");
    let targets = [
        ("the remote directly", direct),
        ("its front port here (capture on)", front),
    ];
    let medians = rotate(&targets, ROUNDS, |addr| wrk(addr, "/health", DURATION, CONNECTIONS));
    println!("\nmedians of {ROUNDS}:");
    for ((name, _), figures) in targets.iter().zip(&medians) {
        println!(
            "  {name:<34} {:>9.0} req/s ({:.2}×)  p99 {:>9.2?} ({:.2}×)",
            figures.rps,
            figures.rps / medians[0].rps,
            figures.p99,
            figures.p99.as_secs_f64() / medians[0].p99.as_secs_f64()
        );
    }
    for child in [&mut run, &mut remote] {
        // SAFETY: signalling our own children.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let _ = child.wait();
    }
}

fn figment_config(toml: &str) -> devmesh::config::Config {
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("devmesh.toml");
    std::fs::write(&path, toml).expect("written");
    devmesh::config::Config::load(&path).expect("a config")
}

/// The median and p99 of `n` runs of `once`.
fn timings(n: usize, mut once: impl FnMut(usize)) -> (Duration, Duration) {
    let mut times: Vec<Duration> = (0..n)
        .map(|i| {
            let began = Instant::now();
            once(i);
            began.elapsed()
        })
        .collect();
    times.sort();
    (times[n / 2], times[n * 99 / 100])
}

/// 2,000 gets from an etcd member started for them; `None` without etcd.
fn etcd_gets() -> Option<(Duration, Duration)> {
    let data = tempfile::tempdir().expect("a temp dir");
    let (mut etcd, client) = devmesh_bench::start_etcd(data.path()).ok()?;
    let cluster = devmesh::remote::etcd::Cluster::new(&[format!("127.0.0.1:{client}")]);
    let put = serde_json::json!({ "key": "cGF5bWVudHM=", "value": "eyJ1cmwiOiJodHRwOi8vMTAuMC4wLjk6OTAwMSJ9" });
    let deadline = Instant::now() + Duration::from_secs(20);
    while cluster.call("/v3/kv/put", &put).is_err() {
        assert!(Instant::now() < deadline, "etcd never served");
        std::thread::sleep(Duration::from_millis(50));
    }
    let get = serde_json::json!({ "key": "cGF5bWVudHM=" });
    let figures = timings(2000, |_| {
        cluster.call("/v3/kv/range", &get).expect("a get");
    });
    let _ = etcd.kill();
    let _ = etcd.wait();
    Some(figures)
}
