//! An export of everything the inspector holds, while the supervisor is
//! asked for other things: 180,000 exchanges are captured, then exported as
//! JSON lines (as `cargo devmesh traffic --jsonl` does) while
//! `/api/services` is asked every 20 ms. Prints how long the export took,
//! how long `/api/services` took meanwhile, and the supervisor's resident
//! memory before, at its peak during and after the export, beside the
//! inspector's memory cap.
//!
//! Run: `cargo run --release -p devmesh-bench --bin export`

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use devmesh_bench::{Api, Built, Load, build, front_port, rss_kib, wait_until_answers};

/// Exchanges captured before the export.
const EXCHANGES: u64 = 180_000;
/// The inspector's default memory cap, `inspector.memory`.
const INSPECTOR_MEMORY_MIB: u64 = 64;

#[tokio::main]
async fn main() {
    let Built { supervisor, shop, .. } = build();
    let state = tempfile::tempdir().expect("a temp dir");
    let mut child = supervise(&supervisor, &shop, state.path());
    let front = front_port(state.path(), "payments").await;
    wait_until_answers(front, "/health").await;
    let api = Api::read(state.path());

    println!("capturing {EXCHANGES} exchanges…");
    let mut sent = 0;
    while sent < EXCHANGES {
        let load = Load::start(front, "/health", 4);
        tokio::time::sleep(Duration::from_secs(1)).await;
        sent += load.stop().await.sent;
    }
    let before = rss_kib(child.id());

    println!("exporting, asking /api/services every 20 ms meanwhile…");
    let done = Arc::new(AtomicBool::new(false));
    let export = std::thread::spawn({
        let (api, done) = (api.clone(), Arc::clone(&done));
        move || {
            let began = Instant::now();
            let (lines, bytes) = export(&api, "/api/traffic.jsonl");
            done.store(true, Ordering::SeqCst);
            (lines, bytes, began.elapsed())
        }
    });
    let (mut latencies, mut peak) = (Vec::new(), before);
    while !done.load(Ordering::SeqCst) {
        let began = Instant::now();
        assert!(
            api.call("GET", "/api/services").starts_with("HTTP/1.1 200"),
            "/api/services failed"
        );
        latencies.push(began.elapsed());
        peak = peak.max(rss_kib(child.id()));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (lines, bytes, took) = export.join().expect("the export runs");
    let after = rss_kib(child.id());
    let _ = signal(&mut child, libc::SIGINT);

    latencies.sort();
    let p99 = latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)];
    println!(
        "\nJSON-lines export of {lines} exchanges ({} MiB) took {took:.1?}",
        bytes >> 20
    );
    println!(
        "/api/services meanwhile, {} asks: p99 {p99:.1?}, longest {:.1?}",
        latencies.len(),
        latencies.last().expect("asked at least once")
    );
    println!(
        "supervisor RSS: {} MiB before, {} MiB at most during, {} MiB after (inspector.memory: {INSPECTOR_MEMORY_MIB} MiB)",
        before >> 10,
        peak >> 10,
        after >> 10
    );
}

fn supervise(supervisor: &Path, shop: &Path, state: &Path) -> Child {
    Command::new(supervisor)
        .args(["run", "--release", "--manifest-path"])
        .arg(shop)
        .arg("payments")
        .env("DEVMESH_STATE_DIR", state)
        .env("DEVMESH_RUN__PORTS", "26600-26609")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the supervisor starts")
}

fn signal(child: &mut Child, signal: i32) -> std::io::Result<std::process::ExitStatus> {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, signal) };
    child.wait()
}

/// Reads an export to its end as it comes: its body's (exchanges, bytes).
fn export(api: &Api, path: &str) -> (u64, u64) {
    let mut stream = std::net::TcpStream::connect(api.addr).expect("the API answers");
    stream
        .write_all(api.request("GET", path).as_bytes())
        .expect("the request goes out");
    let (mut lines, mut bytes, mut buf) = (0, 0, vec![0u8; 64 * 1024]);
    // The answer's head and its chunked framing are not the export's:
    // count the lines that are exchanges, each a JSON object.
    let mut seen = Vec::new();
    loop {
        match stream.read(&mut buf).expect("the export streams") {
            0 => return (lines, bytes),
            n => {
                bytes += n as u64;
                seen.extend_from_slice(&buf[..n]);
                lines += seen.windows(2).filter(|w| w == b"}\n").count() as u64;
                // Keep the last byte: a `}` may end one read and `\n` start the next.
                seen.drain(..seen.len() - 1);
            }
        }
    }
}
