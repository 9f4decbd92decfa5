//! gRPC through a front port with capture on, against the tonic greeter
//! directly and against nginx's `grpc_pass` in front of the same greeter,
//! in one run: tonic unary calls, 16 at a time on one HTTP/2 connection,
//! from the same load program (the fixture's `load`). The three take turns
//! in an order that rotates, and the medians of the rounds are compared.
//!
//! Run: `cargo run --release -p devmesh-bench --bin grpc`
//! (needs `nginx`: `apt-get install nginx-light`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use devmesh_bench::{free_port, front_port, repo, run, verdict};

const SECONDS: &str = "6";
const ROUNDS: usize = 5;
const CONCURRENCY: &str = "16";

/// What the targets are held to, against the greeter called directly.
const MIN_RATE: f64 = 0.9;
const MAX_P99: f64 = 1.1;

fn main() {
    let found = Command::new("sh").arg("-c").arg("command -v nginx").output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "`nginx` is needed (hint: apt-get install nginx-light)"
    );
    let fixture = build();
    let greeter = fixture.join("target/release/greeter");
    let load = fixture.join("target/release/load");

    let direct_port = free_port();
    let mut service = Command::new(&greeter)
        .env("PORT", direct_port.to_string())
        .stdout(Stdio::null())
        .spawn()
        .expect("the greeter starts");
    let direct = SocketAddr::from(([127, 0, 0, 1], direct_port));

    let state = tempfile::tempdir().expect("a temp dir");
    let mut supervisor = Command::new(repo().join("target/release/cargo-devmesh"))
        .args(["run", "--release", "greeter", "--manifest-path"])
        .arg(fixture.join("Cargo.toml"))
        .env("DEVMESH_STATE_DIR", state.path())
        .env("DEVMESH_RUN__PORTS", "26700-26799")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the supervisor starts");
    let front = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(front_port(state.path(), "greeter"));

    let nginx_dir = tempfile::tempdir().expect("a temp dir");
    let nginx_port = free_port();
    let mut nginx = start_nginx(nginx_dir.path(), nginx_port, direct_port);
    let proxied = SocketAddr::from(([127, 0, 0, 1], nginx_port));

    let targets = [
        ("greeter directly", direct),
        ("cargo devmesh front (capture on)", front),
        ("nginx grpc_pass", proxied),
    ];
    for (name, addr) in targets {
        warm_up(&load, name, addr);
    }
    println!(
        "tonic unary SayHello, {CONCURRENCY} concurrent on one HTTP/2 connection, {SECONDS} s a turn, {ROUNDS} rounds in rotation:"
    );
    let mut runs: Vec<Vec<Figures>> = targets.iter().map(|_| Vec::new()).collect();
    for round in 0..ROUNDS {
        for turn in 0..targets.len() {
            let which = (round + turn) % targets.len();
            let (name, addr) = targets[which];
            let figures = measure(&load, addr, SECONDS).unwrap_or_else(|e| panic!("{name}: {e}"));
            println!(
                "  round {}  {name:<34} {:>8.0} calls/s  p99 {:>9.2?}  failed {}",
                round + 1,
                figures.rate,
                figures.p99,
                figures.failed
            );
            runs[which].push(figures);
        }
    }
    let medians: Vec<Figures> = runs.into_iter().map(median).collect();
    let direct = &medians[0];
    println!(
        "\nmedians of {ROUNDS} (failed: all rounds):\n{:<34} {:>10} {:>9} {:>10} {:>9} {:>8}",
        "", "calls/s", "× direct", "p99", "× direct", "failed"
    );
    for ((name, _), figures) in targets.iter().zip(&medians) {
        println!(
            "{name:<34} {:>10.0} {:>9.2} {:>10.2?} {:>9.2} {:>8}",
            figures.rate,
            figures.rate / direct.rate,
            figures.p99,
            figures.p99.as_secs_f64() / direct.p99.as_secs_f64(),
            figures.failed
        );
    }
    let (devmesh, nginx_figures) = (&medians[1], &medians[2]);
    let rate = devmesh.rate / direct.rate;
    let p99 = devmesh.p99.as_secs_f64() / direct.p99.as_secs_f64();
    println!(
        "\ntargets: calls/s ≥ {MIN_RATE}× direct: {} ({rate:.2}×); p99 ≤ {MAX_P99}× direct: {} ({p99:.2}×); \
         no failed call: {} ({}); ahead of nginx: {} ({:.2}× its calls/s, {:.2}× its p99)",
        verdict(rate >= MIN_RATE),
        verdict(p99 <= MAX_P99),
        verdict(devmesh.failed == 0),
        devmesh.failed,
        verdict(devmesh.rate > nginx_figures.rate && devmesh.p99 <= nginx_figures.p99),
        devmesh.rate / nginx_figures.rate,
        devmesh.p99.as_secs_f64() / nginx_figures.p99.as_secs_f64(),
    );

    devmesh_bench::profile(
        "the supervisor, calls through its front port",
        &[supervisor.id()],
        || {
            let _ = measure(&load, front, SECONDS);
        },
    );

    for child in [&mut supervisor, &mut nginx, &mut service] {
        // SAFETY: signalling our own children.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let _ = child.wait();
    }
}

/// The gRPC fixture, copied under `target/` with its library path filled
/// in (so its build is kept between runs), and built in release mode with
/// the supervisor.
fn build() -> PathBuf {
    let copy = repo().join("target/bench/grpc");
    println!("building cargo-devmesh and the gRPC fixture (release)…");
    run(Command::new("cargo").args(["build", "--quiet", "--release", "-p", "cargo-devmesh"]));
    std::fs::create_dir_all(&copy).expect("target/bench is writable");
    run(Command::new("cp")
        .arg("-rT")
        .arg(repo().join("tests/fixtures/grpc"))
        .arg(&copy));
    let manifest = copy.join("Cargo.toml");
    let library = std::fs::canonicalize(repo().join("devmesh")).expect("the library's folder");
    let text = std::fs::read_to_string(&manifest).expect("the fixture's manifest");
    std::fs::write(
        &manifest,
        text.replace("@DEVMESH_PATH@", library.to_str().expect("a UTF-8 path")),
    )
    .expect("the copy's manifest is written");
    run(Command::new("cargo")
        .args(["build", "--quiet", "--release", "--manifest-path"])
        .arg(&manifest));
    copy
}

#[derive(Debug)]
struct Figures {
    rate: f64,
    p99: Duration,
    failed: u64,
}

/// Calls until `addr` answers (a front port waits for its service; nginx
/// and the greeter take a moment to listen), then a short run to warm up.
fn warm_up(load: &Path, name: &str, addr: SocketAddr) {
    for _ in 0..200 {
        if std::net::TcpStream::connect(addr).is_ok() && measure(load, addr, "0.5").is_ok_and(|f| f.rate > 0.0) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{name} at {addr} never answered");
}

fn measure(load: &Path, addr: SocketAddr, seconds: &str) -> Result<Figures, String> {
    let output = Command::new(load)
        .args([&addr.to_string(), CONCURRENCY, seconds])
        .output()
        .map_err(|e| format!("the load program did not run: {e}"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    let field = |name: &str| -> Result<f64, String> {
        text.split_whitespace()
            .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| {
                format!(
                    "the load program printed no {name}: {text}{}",
                    String::from_utf8_lossy(&output.stderr)
                )
            })
    };
    Ok(Figures {
        rate: field("calls")? / field("seconds")?,
        p99: Duration::from_micros(field("p99_us")? as u64),
        failed: field("failed")? as u64,
    })
}

/// The median rate and the median p99 of some runs, and all their failures.
fn median(mut runs: Vec<Figures>) -> Figures {
    let middle = runs.len() / 2;
    let failed = runs.iter().map(|f| f.failed).sum();
    runs.sort_by(|a, b| a.rate.total_cmp(&b.rate));
    let rate = runs[middle].rate;
    runs.sort_by_key(|f| f.p99);
    Figures {
        rate,
        p99: runs[middle].p99,
        failed,
    }
}

fn start_nginx(dir: &Path, port: u16, upstream: u16) -> Child {
    devmesh_bench::start_nginx(
        dir,
        &format!(
            "  upstream greeter {{ server 127.0.0.1:{upstream}; keepalive 32; }}\n\
             server {{\n    listen 127.0.0.1:{port} http2;\n    location / {{ grpc_pass grpc://greeter; }}\n  }}"
        ),
    )
}
