//! Tunnels, in one run, the same service (nginx) behind each: small
//! requests (`wrk -t1 -c16`, rate and p99) and one bulk download (200 MB),
//! through devmesh's tunnel (a relay, and a supervisor exposing the
//! service, capture on), through bore and rathole (installed here with
//! `cargo install` when missing), and directly. Rounds rotate; medians.
//!
//! Run: `cargo run --release -p devmesh-bench --bin tunnel`
//! (needs `wrk`, `nginx` and `curl`: `apt-get install wrk nginx-light curl`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use devmesh_bench::{Figures, Guard, free_port, repo, rotate, run, start_nginx, verdict, wrk};

const ROUNDS: usize = 3;
const DURATION: &str = "4s";
const CONNECTIONS: &str = "16";
const BULK: u64 = 200 * 1024 * 1024;
/// The target: devmesh's tunnel this much the better peer's requests/s.
const MIN_RATE: f64 = 1.2;

fn main() {
    let tools = repo().join("target/bench-tools");
    let bore = installed(&tools, "bore-cli", "bore");
    let rathole = installed(&tools, "rathole", "rathole");
    run(Command::new("cargo").args(["build", "--quiet", "--release", "-p", "cargo-devmesh"]));
    let work = tempfile::tempdir().expect("a temp dir");

    // The service: nginx, a small file and a big one.
    let site = work.path().join("site");
    std::fs::create_dir_all(&site).expect("a folder");
    std::fs::write(site.join("small"), "ok\n").expect("written");
    let big = std::fs::File::create(site.join("big")).expect("a file");
    big.set_len(BULK).expect("200 MB");
    let nginx_port = free_port();
    let nginx_dir = work.path().join("nginx");
    std::fs::create_dir_all(&nginx_dir).expect("a folder");
    let _nginx = Guard(start_nginx(
        &nginx_dir,
        &format!(
            "  server {{\n    listen 127.0.0.1:{nginx_port};\n    root {};\n    location / {{ }}\n  }}",
            site.display()
        ),
    ));
    let direct = SocketAddr::from(([127, 0, 0, 1], nginx_port));
    wait_http(direct);

    let devmesh = devmesh_tunnel(work.path(), nginx_port);
    let bore_addr = bore_tunnel(&bore, nginx_port);
    let rathole_addr = rathole_tunnel(&rathole, work.path(), nginx_port);

    let targets = [
        ("nginx directly", direct),
        ("devmesh front port alone", devmesh.front.expect("devmesh's front port")),
        ("devmesh tunnel (capture on)", devmesh.addr),
        ("bore", bore_addr.addr),
        ("rathole", rathole_addr.addr),
    ];
    for (name, addr) in targets {
        assert!(get_ok(addr, &devmesh.token), "{name} at {addr} does not serve /small");
    }
    println!("\nGET /small, wrk -t1 -c{CONNECTIONS} -d{DURATION}, {ROUNDS} rounds in rotation:");
    let token = devmesh.token.clone();
    let medians = rotate(&targets, ROUNDS, |addr| {
        if addr == devmesh.addr {
            wrk_with_token(addr, &token)
        } else {
            wrk(addr, "/small", DURATION, CONNECTIONS)
        }
    });
    println!("\nmedians of {ROUNDS}:");
    for ((name, _), figures) in targets.iter().zip(&medians) {
        println!(
            "  {name:<30} {:>9.0} req/s ({:.2}× direct)  p99 {:>9.2?}",
            figures.rps,
            figures.rps / medians[0].rps,
            figures.p99
        );
    }
    devmesh_bench::profile(
        "devmesh's relay and supervisor, wrk through the tunnel",
        &devmesh.pids(),
        || {
            wrk_with_token(devmesh.addr, &token);
        },
    );
    println!("\n1,000 connections at once (wrk -t1 -c1000 -d{DURATION}; devmesh's all on its one relay link):");
    let mut devmesh_failed = Vec::new();
    for (name, addr) in targets {
        let text = wrk_text(addr, &devmesh.token, "1000");
        let figures = devmesh_bench::wrk_figures(&text, addr);
        let failed: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| l.contains("Non-2xx") || l.contains("Socket errors"))
            .collect();
        println!(
            "  {name:<30} {:>9.0} req/s  p99 {:>9.2?}  {}",
            figures.rps,
            figures.p99,
            if failed.is_empty() {
                "none failed".to_owned()
            } else {
                failed.join("; ")
            }
        );
        if addr == devmesh.addr {
            devmesh_failed = failed.iter().map(|l| l.to_string()).collect();
        }
    }
    println!("\none 200 MB download each:");
    let rates: Vec<f64> = targets.iter().map(|&(_, addr)| bulk(addr, &devmesh.token)).collect();
    for ((name, _), rate) in targets.iter().zip(&rates) {
        println!("  {name:<30} {:>7.2} GB/s", rate / 1e9);
    }

    // The targets: against the better of bore and rathole.
    let [ours, bore, rathole] = [&medians[2], &medians[3], &medians[4]];
    let rps = ours.rps / bore.rps.max(rathole.rps);
    let p99 = ours.p99.as_secs_f64() / bore.p99.min(rathole.p99).as_secs_f64();
    let bulk_ratio = rates[2] / rates[3].max(rates[4]);
    println!(
        "\ntargets, against the better of bore and rathole: requests/s ≥ {MIN_RATE}×: {} ({rps:.2}×); \
         p99 no worse: {} ({p99:.2}×); bulk ≥ 1.0×: {} ({bulk_ratio:.2}×); 1,000 connections, none failed: {}",
        verdict(rps >= MIN_RATE),
        verdict(p99 <= 1.0),
        verdict(bulk_ratio >= 1.0),
        verdict(devmesh_failed.is_empty()),
    );
}

/// A tunnel's public address, and what keeps it up.
struct Tunnel {
    addr: SocketAddr,
    token: String,
    /// devmesh's: the service's front port, where the tunnel ends.
    front: Option<SocketAddr>,
    processes: Vec<Guard>,
}

impl Tunnel {
    /// The processes that carry it.
    fn pids(&self) -> Vec<u32> {
        self.processes.iter().map(|guard| guard.0.id()).collect()
    }

    /// A tunnel with no token at 127.0.0.1:`port`, once it serves.
    fn open(port: u16, processes: Vec<Guard>) -> Tunnel {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        wait_http(addr);
        Tunnel {
            addr,
            token: String::new(),
            front: None,
            processes,
        }
    }
}

/// `binary` from crate `krate`, installed under `tools` when missing.
fn installed(tools: &Path, krate: &str, binary: &str) -> PathBuf {
    let path = tools.join("bin").join(binary);
    if !path.exists() {
        println!("installing {krate} (once)…");
        // Not `--locked`: rathole 0.5's lock file no longer builds with this toolchain.
        run(Command::new("cargo")
            .args(["install", "--quiet", krate, "--root"])
            .arg(tools));
    }
    path
}

fn devmesh_tunnel(work: &Path, nginx_port: u16) -> Tunnel {
    let relay_port = free_port();
    let token = "bench-0123456789abcdef".to_owned();
    let relay_dir = work.join("relay");
    std::fs::create_dir_all(&relay_dir).expect("a folder");
    std::fs::write(relay_dir.join("tokens"), format!("bench: {token}\n")).expect("tokens");
    let low = free_port();
    std::fs::write(
        relay_dir.join("relay.toml"),
        format!(
            "listen = \"127.0.0.1:{relay_port}\"\npublic_host = \"127.0.0.1\"\nports = \"{low}-{}\"\ntokens = \"{}\"\ndata = \"{}\"\n",
            low.saturating_add(50),
            relay_dir.join("tokens").display(),
            relay_dir.join("data").display()
        ),
    )
    .expect("relay.toml");
    let relay = Guard(
        Command::new(repo().join("target/release/devmesh-relay"))
            .arg("--config")
            .arg(relay_dir.join("relay.toml"))
            .stderr(Stdio::null())
            .spawn()
            .expect("the relay starts"),
    );
    // A workspace whose one service, `web`, is nginx: in `remote` mode its
    // front port sends to nginx, and the tunnel exposes the front port.
    let space = work.join("space");
    std::fs::create_dir_all(&space).expect("a folder");
    std::fs::write(
        space.join("Cargo.toml"),
        "[package]\nname = \"bench-space\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\n[lib]\npath = \"lib.rs\"\n",
    )
    .expect("Cargo.toml");
    std::fs::write(space.join("lib.rs"), "").expect("lib.rs");
    std::fs::write(space.join("tunnel.token"), &token).expect("token");
    std::fs::write(
        space.join("devmesh.toml"),
        format!(
            "[services.web]\ncommand = \"exec sleep 100000\"\nready = \"tcp\"\nexpose = true\n\n[tunnel]\nrelay = \"127.0.0.1:{relay_port}\"\ntoken_file = \"tunnel.token\"\nnamespace = \"bench\"\n\n[remote.static]\nweb = \"http://127.0.0.1:{nginx_port}\"\n"
        ),
    )
    .expect("devmesh.toml");
    let state = work.join("state");
    let supervisor = Guard(
        Command::new(repo().join("target/release/cargo-devmesh"))
            .args(["run", "--manifest-path"])
            .arg(space.join("Cargo.toml"))
            .env("DEVMESH_STATE_DIR", &state)
            .env("DEVMESH_SERVICES__WEB__MODE", "remote")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the supervisor starts"),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let (url, front) = loop {
        let registry = std::fs::read(state.join("registry.json")).ok();
        let web = registry
            .and_then(|r| serde_json::from_slice::<serde_json::Value>(&r).ok())
            .map(|r| r["services"]["web"].clone())
            .unwrap_or_default();
        if let (Some(url), Some(front)) = (web["callback_url"].as_str(), web["url"].as_str()) {
            break (url.to_owned(), front.to_owned());
        }
        assert!(Instant::now() < deadline, "the devmesh tunnel never came up");
        std::thread::sleep(Duration::from_millis(50));
    };
    let addr = url.trim_start_matches("http://").parse().expect("an address");
    let front = front.trim_start_matches("http://").trim_end_matches('/').parse().ok();
    Tunnel {
        addr,
        token,
        front,
        processes: vec![relay, supervisor],
    }
}

fn bore_tunnel(bore: &Path, nginx_port: u16) -> Tunnel {
    // bore's control port is its own (7835).
    let server = Guard(
        Command::new(bore)
            .args([
                "server",
                "--bind-addr",
                "127.0.0.1",
                "--min-port",
                "40000",
                "--max-port",
                "40999",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("bore server starts"),
    );
    std::thread::sleep(Duration::from_millis(300));
    let public = 40000 + (free_port() % 900);
    let client = Guard(
        Command::new(bore)
            .args([
                "local",
                &nginx_port.to_string(),
                "--to",
                "127.0.0.1",
                "--port",
                &public.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("bore local starts"),
    );
    Tunnel::open(public, vec![server, client])
}

fn rathole_tunnel(rathole: &Path, work: &Path, nginx_port: u16) -> Tunnel {
    let (control, public) = (free_port(), free_port());
    let server_toml = work.join("rathole-server.toml");
    let client_toml = work.join("rathole-client.toml");
    let token = "bench-rathole-token";
    std::fs::write(
        &server_toml,
        format!("[server]\nbind_addr = \"127.0.0.1:{control}\"\n[server.services.web]\ntoken = \"{token}\"\nbind_addr = \"127.0.0.1:{public}\"\n"),
    )
    .expect("written");
    std::fs::write(
        &client_toml,
        format!("[client]\nremote_addr = \"127.0.0.1:{control}\"\n[client.services.web]\ntoken = \"{token}\"\nlocal_addr = \"127.0.0.1:{nginx_port}\"\n"),
    )
    .expect("written");
    let quiet = |toml: &Path, flag: &str| {
        Guard(
            Command::new(rathole)
                .arg(flag)
                .arg(toml)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("rathole starts"),
        )
    };
    let server = quiet(&server_toml, "--server");
    let client = quiet(&client_toml, "--client");
    Tunnel::open(public, vec![server, client])
}

/// Waits until `addr` serves `/small`.
fn wait_http(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !get_ok(addr, "") {
        assert!(Instant::now() < deadline, "{addr} never served");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn get_ok(addr: SocketAddr, token: &str) -> bool {
    let request =
        format!("GET /small HTTP/1.1\r\nhost: {addr}\r\nx-devmesh-access: {token}\r\nconnection: close\r\n\r\n");
    devmesh_bench::exchange(addr, &request).is_some_and(|a| a.starts_with("HTTP/1.1 200"))
}

/// wrk with the team token a private tunnel wants.
fn wrk_with_token(addr: SocketAddr, token: &str) -> Figures {
    devmesh_bench::wrk_figures(&wrk_text(addr, token, CONNECTIONS), addr)
}

/// What wrk printed, run with `connections` and the team token.
fn wrk_text(addr: SocketAddr, token: &str, connections: &str) -> String {
    let script = std::env::temp_dir().join(format!("devmesh-bench-{}.lua", std::process::id()));
    std::fs::write(&script, format!("wrk.headers[\"x-devmesh-access\"] = \"{token}\"\n")).expect("a script");
    let output = Command::new("wrk")
        .args(["-t", "1", "-c", connections, "-d", DURATION, "--latency", "-s"])
        .arg(&script)
        .arg(format!("http://{addr}/small"))
        .output()
        .expect("wrk runs");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// One download of the big file: bytes a second.
fn bulk(addr: SocketAddr, token: &str) -> f64 {
    let output = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{speed_download}", "-H"])
        .arg(format!("x-devmesh-access: {token}"))
        .arg(format!("http://{addr}/big"))
        .output()
        .expect("curl runs");
    String::from_utf8_lossy(&output.stdout).trim().parse().unwrap_or(0.0)
}
