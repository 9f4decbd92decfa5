//! The shop under `cargo devmesh run --watch`, restarted, killed and
//! rebuilt under load (see `main.rs`). Its WebSocket service, `live`, is
//! this program itself (`soak ws-echo`), run by the supervisor as a command.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use crate::{Journal, Random, print_flat, ticks_to_ms};

use devmesh_bench::{Api, cpu_ticks, front_port, open_fds, processes_mentioning, repo, rss_kib, run, signal, verdict};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// The shop's services, and the WebSocket one this program serves.
const SHOP: [&str; 3] = ["gateway", "orders", "payments"];
const SERVICES: [&str; 4] = ["gateway", "orders", "payments", "live"];
const CLIENTS: usize = 8;
/// The argument that makes this program the WebSocket service.
pub const WS_ECHO: &str = "ws-echo";
const RESTART_EVERY: Duration = Duration::from_secs(10);
const KILL_EVERY: Duration = Duration::from_secs(60);
const REBUILD_EVERY: Duration = Duration::from_secs(300);

/// Counts of one kind of request.
#[derive(Debug, Default)]
struct Counts {
    sent: AtomicU64,
    failed: AtomicU64,
}

pub async fn soak(minutes: usize) {
    println!("building cargo-devmesh (release)…");
    run(Command::new("cargo").args(["build", "--quiet", "--release", "-p", "cargo-devmesh"]));
    let supervisor_bin = repo().join("target/release/cargo-devmesh");
    let shop = repo().join("examples/shop/Cargo.toml");
    let work = tempfile::tempdir().expect("a temp dir");
    let state = work.path().join("state");
    let me = std::env::current_exe().expect("this program's path");

    println!("starting the shop under `cargo devmesh run --watch` (its first build may take a while)…");
    let log = std::fs::File::create(work.path().join("run.log")).expect("a log file");
    let mut supervisor = Command::new(&supervisor_bin)
        .args(["run", "--watch", "--manifest-path"])
        .arg(&shop)
        .env("DEVMESH_STATE_DIR", &state)
        .env(
            "DEVMESH_SERVICES__LIVE__COMMAND",
            format!("exec {} {WS_ECHO}", me.display()),
        )
        .env("DEVMESH_SERVICES__LIVE__READY", "tcp")
        .stdout(log.try_clone().expect("the log"))
        .stderr(log)
        .spawn()
        .expect("the supervisor starts");
    let mut fronts = Vec::new();
    for name in SERVICES {
        fronts.push(front_port(&state, name).await);
    }
    let [gateway, orders, payments, live] = fronts[..] else {
        unreachable!()
    };
    for addr in [gateway, orders, payments] {
        devmesh_bench::wait_until_answers(addr, "/health").await;
    }
    let api = Api::read(&state);
    let journal = Arc::new(Journal::new(true));
    let stop = Arc::new(AtomicBool::new(false));

    // 8 keep-alive clients, each with its own pool: half check out (three
    // hops, POSTs between the services), half ask each service's health.
    let (checkouts, healths) = (Arc::new(Counts::default()), Arc::new(Counts::default()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (url, counts, kind) = if i % 2 == 0 {
                (
                    format!("http://{gateway}/checkout/tea?quantity=1"),
                    &checkouts,
                    "GET /checkout/tea",
                )
            } else {
                let addr = [gateway, orders, payments][(i / 2) % 3];
                (format!("http://{addr}/health"), &healths, "GET /health")
            };
            tokio::spawn(client(
                url,
                kind,
                Arc::clone(counts),
                Arc::clone(&journal),
                Arc::clone(&stop),
            ))
        })
        .collect();
    let websocket = {
        let (journal, stop) = (Arc::clone(&journal), Arc::clone(&stop));
        std::thread::spawn(move || websocket_client(live, &journal, &stop))
    };
    let mut follower = Follower::start(&supervisor_bin, &state);

    println!("\nsoaking for {minutes} minutes; each minute's figures, with the events between them:");
    println!(
        "{:>6} {:>10} {:>8} {:>10} {:>6} {:>16} {:>10} {:>14}",
        "minute", "requests", "failed", "RSS KiB", "fds", "CPU ms/1k req", "ws echoes", "traffic lines"
    );
    let supervisor_pid = supervisor.id();
    let mut samples = Vec::new();
    let mut random = Random::seeded();
    let (mut next_restart, mut next_kill, mut next_rebuild) = (RESTART_EVERY, KILL_EVERY, REBUILD_EVERY / 2);
    let mut last = (cpu_ticks(supervisor_pid), 0u64);
    for minute in 1..=minutes {
        let end = Duration::from_secs(60 * minute as u64);
        while journal.began.elapsed() < end {
            let now = journal.began.elapsed();
            if now >= next_restart {
                next_restart += RESTART_EVERY;
                let name = SERVICES[random.below(SERVICES.len())];
                let answer = call(&api, "POST", &format!("/api/services/{name}/restart?build=false")).await;
                journal.event(format!("restart {name}: {}", status_line(&answer)));
            }
            if now >= next_kill {
                next_kill += KILL_EVERY;
                let name = SERVICES[random.below(SERVICES.len())];
                match pid_of(&api, name).await {
                    Some(pid) => {
                        // SAFETY: a process of the mesh this benchmark runs.
                        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                        journal.event(format!("kill -9 {name} (pid {pid})"));
                    }
                    None => journal.event(format!("kill -9 {name}: it had no process")),
                }
            }
            if now >= next_rebuild {
                next_rebuild += REBUILD_EVERY;
                let name = SHOP[random.below(SHOP.len())];
                touch(&repo().join(format!("examples/shop/{name}/src/main.rs")));
                journal.event(format!("touched {name}'s main.rs: --watch rebuilds it"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let ticks = cpu_ticks(supervisor_pid);
        let requests = checkouts.sent.load(Ordering::Relaxed) + healths.sent.load(Ordering::Relaxed);
        let failed = checkouts.failed.load(Ordering::Relaxed) + healths.failed.load(Ordering::Relaxed);
        let sample = Sample {
            rss: rss_kib(supervisor_pid),
            fds: open_fds(supervisor_pid),
            cpu_per_1k: ticks_to_ms(ticks - last.0) / ((requests - last.1).max(1) as f64 / 1000.0),
        };
        last = (ticks, requests);
        println!(
            "{minute:>6} {requests:>10} {failed:>8} {:>10} {:>6} {:>16.1} {:>10} {:>14}",
            sample.rss,
            sample.fds,
            sample.cpu_per_1k,
            ECHOES.load(Ordering::Relaxed),
            follower.lines.load(Ordering::Relaxed)
        );
        samples.push(sample);
    }

    stop.store(true, Ordering::Relaxed);
    for client in clients {
        let _ = client.await;
    }
    let _ = websocket.join();
    let follower_alive = follower.alive();
    let follower_lines = follower.lines.load(Ordering::Relaxed);
    drop(follower);

    println!("\nCtrl-C to the supervisor…");
    let stopping = Instant::now();
    signal(&mut supervisor, libc::SIGINT);
    let stopped_in = stopping.elapsed();
    // The services' processes carry the state folder in their environment
    // (DEVMESH_REGISTRY); none may outlive the supervisor.
    let leftovers = processes_mentioning(&state.to_string_lossy());

    report(Report {
        minutes,
        journal: &journal,
        checkouts: &checkouts,
        healths: &healths,
        samples: &samples,
        follower_alive,
        follower_lines,
        stopped_in,
        leftovers: &leftovers,
        log: &work.path().join("run.log"),
    });
    // Kept for reading when something went wrong.
    if !leftovers.is_empty() {
        let _ = work.keep();
    }
}

/// One minute's figures of the supervisor.
#[derive(Debug)]
struct Sample {
    rss: u64,
    fds: usize,
    cpu_per_1k: f64,
}

#[derive(Debug)]
struct Report<'a> {
    minutes: usize,
    journal: &'a Journal,
    checkouts: &'a Counts,
    healths: &'a Counts,
    samples: &'a [Sample],
    follower_alive: bool,
    follower_lines: u64,
    stopped_in: Duration,
    leftovers: &'a [(u32, String)],
    log: &'a Path,
}

fn report(r: Report) {
    let count = |prefix| r.journal.count(prefix);
    println!(
        "\n{} minutes: {} restarts, {} kill -9s, {} --watch rebuilds",
        r.minutes,
        count("restart"),
        count("kill -9"),
        count("touched")
    );
    for (kind, counts) in [
        ("GET /health (bodiless, idempotent)", r.healths),
        ("GET /checkout/tea (POSTs between services)", r.checkouts),
    ] {
        println!(
            "  {kind:<44} {:>9} sent {:>6} failed",
            counts.sent.load(Ordering::Relaxed),
            counts.failed.load(Ordering::Relaxed)
        );
    }
    println!(
        "  WebSocket echoes                             {:>9} (each checked; ends listed below)",
        ECHOES.load(Ordering::Relaxed)
    );
    println!(
        "  traffic -f follower                          {:>9} lines, {}",
        r.follower_lines,
        if r.follower_alive {
            "attached to the end"
        } else {
            "it EXITED during the run"
        }
    );

    // A failure is put beside the event just before it, whichever it was.
    let unexplained_health = r
        .journal
        .print_failures(usize::MAX, |_| String::new(), |f| f.starts_with("GET /health"));
    let cpu = |samples: &[Sample]| samples.iter().map(|s| s.cpu_per_1k).sum::<f64>() / samples.len().max(1) as f64;
    let edge = 2.min(r.samples.len());
    let (cpu_start, cpu_end) = (cpu(&r.samples[..edge]), cpu(&r.samples[r.samples.len() - edge..]));

    println!("\ntargets:");
    println!(
        "  0 failed bodiless idempotent requests:           {} ({unexplained_health})",
        verdict(unexplained_health == 0)
    );
    print_flat(
        "the supervisor's RSS",
        &r.samples.iter().map(|s| s.rss as f64).collect::<Vec<_>>(),
    );
    print_flat(
        "the supervisor's descriptors",
        &r.samples.iter().map(|s| s.fds as f64).collect::<Vec<_>>(),
    );
    println!(
        "  supervisor CPU per 1,000 requests:               {cpu_start:.1} ms in the first {edge} minutes, {cpu_end:.1} ms in the last {edge}"
    );
    println!(
        "  no process left after Ctrl-C ({:.1?} to stop):    {}",
        r.stopped_in,
        verdict(r.leftovers.is_empty())
    );
    for (pid, command) in r.leftovers {
        println!("    left: {pid} {command}");
    }
    println!("the supervisor's log: {}", r.log.display());
}

/// A keep-alive client sending `GET url` back to back until `stop`.
async fn client(url: String, kind: &'static str, counts: Arc<Counts>, journal: Arc<Journal>, stop: Arc<AtomicBool>) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let uri: hyper::Uri = url.parse().expect("a URL");
    while !stop.load(Ordering::Relaxed) {
        let outcome = match client.get(uri.clone()).await {
            Ok(response) => {
                let status = response.status();
                match response.into_body().collect().await {
                    Ok(_) if status.is_success() => Ok(()),
                    Ok(body) => Err(format!(
                        "{status}: {}",
                        String::from_utf8_lossy(&body.to_bytes()).trim()
                    )),
                    Err(e) => Err(format!("{status}, then the body broke: {e}")),
                }
            }
            Err(e) => Err(format!("{e:?}")),
        };
        counts.sent.fetch_add(1, Ordering::Relaxed);
        if let Err(what) = outcome {
            counts.failed.fetch_add(1, Ordering::Relaxed);
            journal.failure(format!("{kind} ({url}): {what}"));
        }
    }
}

/// Messages the WebSocket client got back as sent.
static ECHOES: AtomicU64 = AtomicU64::new(0);

/// Sends a message every 50 ms on a WebSocket to `live` and checks each
/// echo; when the connection ends, says so and connects again.
fn websocket_client(live: SocketAddr, journal: &Journal, stop: &AtomicBool) {
    let mut sent = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let connected = TcpStream::connect(live)
            .map_err(|e| e.to_string())
            .and_then(|s| tungstenite::client(format!("ws://{live}/"), s).map_err(|e| e.to_string()));
        let mut socket = match connected {
            Ok((socket, _)) => socket,
            Err(e) => {
                journal.failure(format!("WebSocket: could not connect: {e}"));
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let opened = Instant::now();
        let ended = loop {
            if stop.load(Ordering::Relaxed) {
                let _ = socket.close(None);
                break None;
            }
            sent += 1;
            let text = format!("message {sent}");
            if let Err(e) = socket.send(tungstenite::Message::text(text.clone())) {
                break Some(format!("sending: {e}"));
            }
            match socket.read() {
                Ok(tungstenite::Message::Text(echo)) if echo.as_str() == text => {
                    ECHOES.fetch_add(1, Ordering::Relaxed);
                }
                Ok(other) => break Some(format!("echoed {other:?} for {text:?}")),
                Err(e) => break Some(format!("reading: {e}")),
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        if let Some(why) = ended {
            journal.failure(format!("WebSocket ended after {:.1?} open: {why}", opened.elapsed()));
        }
    }
}

/// `soak ws-echo`: a WebSocket echo on `$PORT`, a thread a connection.
pub fn ws_echo() {
    let port: u16 = std::env::var("PORT").ok().and_then(|p| p.parse().ok()).expect("PORT");
    let listener = TcpListener::bind(("127.0.0.1", port)).expect("PORT is free");
    for stream in listener.incoming().flatten() {
        std::thread::spawn(move || {
            let Ok(mut socket) = tungstenite::accept(stream) else {
                return;
            };
            while let Ok(message) = socket.read() {
                if (message.is_text() || message.is_binary()) && socket.send(message).is_err() {
                    return;
                }
            }
        });
    }
}

/// `cargo devmesh traffic -f`, its lines counted.
#[derive(Debug)]
struct Follower {
    child: Child,
    lines: Arc<AtomicU64>,
}

impl Follower {
    fn start(supervisor: &Path, state: &Path) -> Follower {
        let mut child = Command::new(supervisor)
            .args(["traffic", "-f"])
            .env("DEVMESH_STATE_DIR", state)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("traffic -f starts");
        let lines = Arc::new(AtomicU64::new(0));
        let stdout = child.stdout.take().expect("its output");
        let counted = Arc::clone(&lines);
        std::thread::spawn(move || {
            for _ in BufReader::new(stdout).lines().map_while(Result::ok) {
                counted.fetch_add(1, Ordering::Relaxed);
            }
        });
        Follower { child, lines }
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_none()
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        signal(&mut self.child, libc::SIGINT);
    }
}

/// An API call, off the runtime's threads (the clients run on them).
async fn call(api: &Api, method: &'static str, path: &str) -> String {
    let (api, path) = (api.clone(), path.to_owned());
    tokio::task::spawn_blocking(move || devmesh_bench::exchange(api.addr, &api.request(method, &path)))
        .await
        .expect("the call runs")
        .unwrap_or_else(|| "no answer".to_owned())
}

/// The process serving `name` now, from `GET /api/services`.
async fn pid_of(api: &Api, name: &str) -> Option<u32> {
    let answer = call(api, "GET", "/api/services").await;
    let body = answer.split_once("\r\n\r\n")?.1;
    let services: serde_json::Value = serde_json::from_str(body).ok()?;
    let service = services.as_array()?.iter().find(|s| s["name"] == name)?;
    service["pid"].as_u64().map(|p| p as u32)
}

fn status_line(answer: &str) -> &str {
    answer.lines().next().unwrap_or("no answer")
}

/// Sets `path`'s modified time to now: cargo rebuilds its package, and
/// `--watch` sees the change; its content stays as it is.
fn touch(path: &Path) {
    std::fs::File::options()
        .append(true)
        .open(path)
        .and_then(|f| f.set_modified(SystemTime::now()))
        .unwrap_or_else(|e| panic!("could not touch {}: {e}", path.display()));
}
