//! What the benchmarks share: a closed-loop HTTP load generator, and ways to
//! build and run the things measured.
//!
//! Run a benchmark with `cargo run --release -p devmesh-bench --bin NAME`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs `command` to completion, or exits with what it printed.
pub fn run(command: &mut Command) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("could not run {command:?}: {e}"));
    if !output.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&output.stderr));
        panic!("{command:?} failed: {}", output.status);
    }
}

/// Figures of one load run.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub sent: u64,
    pub failed: u64,
    /// The longest a successful request took.
    pub longest: Duration,
    /// The longest any client went without a successful response: a
    /// refused connection fails fast, so this shows an outage that `longest` hides.
    pub longest_gap: Duration,
}

/// A load that runs until stopped: `workers` clients, each sending
/// `GET path` back to back on a keep-alive connection.
#[derive(Debug)]
pub struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    longest_micros: Arc<AtomicU64>,
    longest_gap_micros: Arc<AtomicU64>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub fn start(addr: SocketAddr, path: &str, workers: usize) -> Load {
        let load = Load {
            stop: Arc::default(),
            sent: Arc::default(),
            failed: Arc::default(),
            longest_micros: Arc::default(),
            longest_gap_micros: Arc::default(),
            workers: Vec::new(),
        };
        let url: hyper::Uri = format!("http://{addr}{path}").parse().expect("a URL");
        let workers = (0..workers)
            .map(|_| {
                let (stop, sent, failed, longest, longest_gap) = (
                    Arc::clone(&load.stop),
                    Arc::clone(&load.sent),
                    Arc::clone(&load.failed),
                    Arc::clone(&load.longest_micros),
                    Arc::clone(&load.longest_gap_micros),
                );
                let url = url.clone();
                tokio::spawn(async move {
                    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
                    let mut last_success = Instant::now();
                    while !stop.load(Ordering::Relaxed) {
                        let began = Instant::now();
                        let ok = match client.get(url.clone()).await {
                            Ok(response) => {
                                let status = response.status();
                                response.into_body().collect().await.is_ok() && status.is_success()
                            }
                            Err(_) => false,
                        };
                        sent.fetch_add(1, Ordering::Relaxed);
                        if ok {
                            let micros = |d: Duration| d.as_micros() as u64;
                            longest.fetch_max(micros(began.elapsed()), Ordering::Relaxed);
                            longest_gap.fetch_max(micros(last_success.elapsed()), Ordering::Relaxed);
                            last_success = Instant::now();
                        } else {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        Load { workers, ..load }
    }

    pub async fn stop(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        for worker in self.workers {
            let _ = worker.await;
        }
        LoadReport {
            sent: self.sent.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            longest: Duration::from_micros(self.longest_micros.load(Ordering::Relaxed)),
            longest_gap: Duration::from_micros(self.longest_gap_micros.load(Ordering::Relaxed)),
        }
    }
}

/// Waits until `addr` answers `GET path` with a success, polling.
pub async fn wait_until_answers(addr: SocketAddr, path: &str) -> Duration {
    let began = Instant::now();
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let url: hyper::Uri = format!("http://{addr}{path}").parse().expect("a URL");
    loop {
        if let Ok(response) = client.get(url.clone()).await
            && response.status().is_success()
        {
            return began.elapsed();
        }
        // Finely, so that the poll adds little to a start of a few ms.
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

/// What the benchmarks run: `cargo-devmesh` and the shop's `payments`,
/// built in release mode.
#[derive(Debug)]
pub struct Built {
    pub supervisor: PathBuf,
    pub payments: PathBuf,
    /// The shop's `Cargo.toml`.
    pub shop: PathBuf,
}

/// Builds the supervisor and the shop's `payments` (release).
pub fn build() -> Built {
    let shop = repo().join("examples/shop/Cargo.toml");
    println!("building cargo-devmesh and the shop (release)…");
    run(Command::new("cargo").args(["build", "--quiet", "--release", "-p", "cargo-devmesh"]));
    run(Command::new("cargo")
        .args(["build", "--quiet", "--release", "-p", "payments", "--manifest-path"])
        .arg(&shop));
    Built {
        supervisor: repo().join("target/release/cargo-devmesh"),
        payments: repo().join("examples/shop/target/release/payments"),
        shop,
    }
}

/// The shop's `payments` run on its own (no supervisor) on a free port,
/// once it answers: a service "directly", or a remote copy of it.
pub async fn payments_alone(payments: &Path) -> (Child, SocketAddr) {
    let port = free_port();
    let child = Command::new(payments)
        .env("PORT", port.to_string())
        .stdout(Stdio::null())
        .spawn()
        .expect("payments starts");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_until_answers(addr, "/health").await;
    (child, addr)
}

/// `cargo devmesh run --release payments` on the shop, its state in
/// `state`, its ports in `ports`, with `env` besides.
pub fn run_payments(built: &Built, state: &Path, ports: &str, env: &[(&str, String)]) -> Child {
    Command::new(&built.supervisor)
        .args(["run", "--release", "payments", "--manifest-path"])
        .arg(&built.shop)
        .env("DEVMESH_STATE_DIR", state)
        .env("DEVMESH_RUN__PORTS", ports)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the supervisor starts")
}

/// Waits for the supervisor whose state is in `state` to give `service` a port.
pub async fn front_port(state: &Path, service: &str) -> SocketAddr {
    loop {
        let ports = std::fs::read(state.join("ports.json")).ok();
        let port = ports
            .and_then(|p| serde_json::from_slice::<serde_json::Value>(&p).ok())
            .and_then(|p| p[service].as_u64());
        if let Some(port) = port {
            return SocketAddr::from(([127, 0, 0, 1], port as u16));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An etcd member on loopback, its data in `dir`, on ports nothing else
/// holds: the process and its client port (it may not serve yet).
pub fn start_etcd(dir: &Path) -> std::io::Result<(Child, u16)> {
    let (client, peer) = (free_port(), free_port());
    let etcd = Command::new("etcd")
        .arg("--data-dir")
        .arg(dir)
        .args(["--listen-client-urls", &format!("http://127.0.0.1:{client}")])
        .args(["--advertise-client-urls", &format!("http://127.0.0.1:{client}")])
        .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
        .args(["--initial-advertise-peer-urls", &format!("http://127.0.0.1:{peer}")])
        .args(["--initial-cluster", &format!("default=http://127.0.0.1:{peer}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    Ok((etcd, client))
}

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// CPU time process `pid` has used, in clock ticks, from `/proc`.
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(") ").map_or("", |(_, rest)| rest).split(' ').collect();
    // utime and stime, fields 14 and 15 of the line (11 and 12 after the name).
    let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    field(11) + field(12)
}

/// Resident memory of process `pid`, in KiB, from `/proc`.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Sends `request` on a new blocking connection and reads the answer to
/// its close; `None` when the connection is refused or breaks. Plain
/// sockets: a figure taken with them carries no async runtime's wake-ups.
pub fn exchange(addr: SocketAddr, request: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.write_all(request.as_bytes()).ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    Some(answer)
}

/// A running supervisor's API, from `<state>/control.json`.
#[derive(Debug, Clone)]
pub struct Api {
    pub addr: SocketAddr,
    pub token: String,
}

impl Api {
    pub fn read(state: &Path) -> Api {
        let control: serde_json::Value =
            serde_json::from_slice(&std::fs::read(state.join("control.json")).expect("control.json")).expect("JSON");
        Api {
            addr: control["addr"].as_str().expect("addr").parse().expect("an address"),
            token: control["token"].as_str().expect("token").to_owned(),
        }
    }

    /// The request `METHOD path`, authorized, on a connection of its own.
    pub fn request(&self, method: &str, path: &str) -> String {
        format!(
            "{method} {path} HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            self.addr, self.token
        )
    }

    /// `METHOD path`, blocking: the whole answer, head and body.
    pub fn call(&self, method: &str, path: &str) -> String {
        exchange(self.addr, &self.request(method, path)).expect("the API answers")
    }
}

/// Starts nginx in the foreground with its files in `dir` and `http` (its
/// upstreams and servers) inside the `http` block of a config that logs no
/// access.
pub fn start_nginx(dir: &Path, http: &str) -> Child {
    let config = dir.join("nginx.conf");
    std::fs::write(
        &config,
        format!(
            "worker_processes auto;\ndaemon off;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {dir};\n  proxy_temp_path {dir};\n{http}\n}}\n",
            dir = dir.display()
        ),
    )
    .expect("the nginx config is written");
    Command::new("nginx")
        .arg("-c")
        .arg(&config)
        .arg("-e")
        .arg(dir.join("error.log"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx starts")
}

/// A load run's rate and tail.
#[derive(Debug)]
pub struct Figures {
    pub rps: f64,
    pub p99: Duration,
}

/// The middle of some durations.
pub fn median_time(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// A process stopped (SIGTERM) and waited for when dropped.
#[derive(Debug)]
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

/// The median rate and the median p99 of some runs (each on its own).
pub fn median(mut runs: Vec<Figures>) -> Figures {
    let middle = runs.len() / 2;
    runs.sort_by(|a, b| a.rps.total_cmp(&b.rps));
    let rps = runs[middle].rps;
    runs.sort_by_key(|f| f.p99);
    Figures {
        rps,
        p99: runs[middle].p99,
    }
}

/// `wrk -t1 -c{connections} -d{duration} --latency` on `GET path` at `addr`.
pub fn wrk(addr: SocketAddr, path: &str, duration: &str, connections: &str) -> Figures {
    wrk_with(addr, path, duration, connections, &[])
}

/// [`wrk`], each request with `headers` (`name: value`).
pub fn wrk_with(addr: SocketAddr, path: &str, duration: &str, connections: &str, headers: &[&str]) -> Figures {
    let output = Command::new("wrk")
        .args(["-t", "1", "-c", connections, "-d", duration, "--latency"])
        .args(headers.iter().flat_map(|h| ["-H", h]))
        .arg(format!("http://{addr}{path}"))
        .output()
        .expect("wrk runs");
    wrk_figures(&String::from_utf8_lossy(&output.stdout), addr)
}

/// The rate and p99 in what `wrk --latency` printed for `addr`; its errors said.
pub fn wrk_figures(text: &str, addr: SocketAddr) -> Figures {
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

/// Measures each target with `measure` for `rounds` rounds, taking turns in
/// an order that rotates (so that none always follows the same one),
/// printing each run; the medians, in the order of `targets`.
pub fn rotate(targets: &[(&str, SocketAddr)], rounds: usize, measure: impl Fn(SocketAddr) -> Figures) -> Vec<Figures> {
    let mut runs: Vec<Vec<Figures>> = targets.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        for turn in 0..targets.len() {
            let which = (round + turn) % targets.len();
            let (name, addr) = targets[which];
            let figures = measure(addr);
            println!(
                "  round {}  {name:<34} {:>9.0} req/s  p99 {:>9.2?}",
                round + 1,
                figures.rps,
                figures.p99
            );
            runs[which].push(figures);
        }
    }
    runs.into_iter().map(median).collect()
}

/// How a target's figure came out, as the benchmarks print it.
pub fn verdict(held: bool) -> &'static str {
    if held { "held" } else { "MISSED" }
}

/// With `DEVMESH_BENCH_PROFILE` set, samples processes `pids` with `perf`
/// while `load` runs, and prints the frames where their CPU went (the
/// symbols of at least 1.5% of the samples, kernel ones included), titled
/// `title`. Without it, does nothing: a figure is never measured under
/// the profiler.
pub fn profile(title: &str, pids: &[u32], load: impl FnOnce()) {
    if std::env::var_os("DEVMESH_BENCH_PROFILE").is_none() {
        return;
    }
    let data = std::env::temp_dir().join(format!("devmesh-bench-{}.perf", std::process::id()));
    let pids = pids.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    let mut perf = Command::new("perf")
        .args(["record", "--quiet", "-F", "999", "-g", "-o"])
        .arg(&data)
        .args(["-p", &pids])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("perf runs (hint: apt-get install linux-perf)");
    load();
    // perf writes its data when interrupted.
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(perf.id() as libc::pid_t, libc::SIGINT) };
    let _ = perf.wait();
    let report = Command::new("perf")
        .args([
            "report",
            "--stdio",
            "--no-children",
            "--sort",
            "dso,symbol",
            "-g",
            "none",
        ])
        .args(["--percent-limit", "1.5", "-i"])
        .arg(&data)
        .output()
        .expect("perf report runs");
    let _ = std::fs::remove_file(&data);
    println!("\nprofile: {title} (perf, the processes' own samples):");
    for line in String::from_utf8_lossy(&report.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .take(25)
    {
        println!("  {}", line.trim_end());
    }
}

/// Sends `signal` and waits up to 10 s for the child to exit, then kills
/// it: a peer that does not stop must not hang the benchmark.
pub fn signal(child: &mut Child, signal: i32) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, signal) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    eprintln!(
        "{} did not exit on signal {signal}; killed, with what it started",
        child.id()
    );
    for pid in descendants(child.id()) {
        // SAFETY: signalling a process this benchmark started (through its child).
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The processes below `pid`, from the parents in `/proc`.
pub fn descendants(pid: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let child: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).ok()?;
            let parent = stat.rsplit_once(") ")?.1.split(' ').nth(1)?.parse().ok()?;
            Some((child, parent))
        })
        .collect();
    let mut found = vec![pid];
    let mut at = 0;
    while at < found.len() {
        let parent = found[at];
        found.extend(parents.iter().filter(|(_, p)| *p == parent).map(|(c, _)| *c));
        at += 1;
    }
    found.split_off(1)
}

/// Descriptors process `pid` holds open, from `/proc`.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |dir| dir.count())
}

/// Processes (but this one) whose command line or environment holds
/// `text`: their ids and command lines.
pub fn processes_mentioning(text: &str) -> Vec<(u32, String)> {
    let me = std::process::id();
    let needle = text.as_bytes();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let read = |what: &str| std::fs::read(format!("/proc/{pid}/{what}")).unwrap_or_default();
            let (cmdline, environ) = (read("cmdline"), read("environ"));
            let holds = |bytes: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
            (pid != me && (holds(&cmdline) || holds(&environ))).then(|| {
                (
                    pid,
                    String::from_utf8_lossy(&cmdline).replace('\0', " ").trim().to_owned(),
                )
            })
        })
        .collect()
}
