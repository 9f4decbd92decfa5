//! Services used from the sandbox: a front port for each, and a service's
//! traffic moved between its copy here and its copy there while
//! everything runs. The "sandbox" is a Python `http.server`, on a host of
//! its own (a network namespace) or on loopback.

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::harness::{Mesh, exchanges, fixture, get, read_json, text};

/// A Python `http.server` serving `sandbox/whoami` ("sandbox <name>"),
/// killed when dropped: on loopback, or on a host of its own (a network
/// namespace joined to this one by a veth pair), as a team's sandbox is.
pub struct Sandbox {
    process: Child,
    pub addr: std::net::SocketAddr,
    /// The namespace and this side's end of the veth pair, when it has them.
    host: Option<(String, String)>,
}

impl Sandbox {
    fn start(dir: &std::path::Path, name: &str) -> Sandbox {
        std::fs::create_dir_all(dir).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Sandbox::serve(dir, name, ([127, 0, 0, 1], port).into(), None)
    }

    /// On a host of its own: namespace `dm<pid>`, 10.N.M.2 behind a veth
    /// pair whose other end, here, is 10.N.M.1 (root only).
    pub fn on_a_host_of_its_own(dir: &std::path::Path, name: &str) -> Sandbox {
        // Each sandbox of this process gets names and a network of its own:
        // tests run in parallel.
        static MADE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let k = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pid = std::process::id();
        let (ns, here, there) = (format!("dm{pid}n{k}"), format!("dm{pid}n{k}a"), format!("dm{pid}n{k}b"));
        let (n, m) = (100 + (pid >> 8) % 100, (pid + 37 * k) % 256);
        let run = |args: &[&str]| {
            let status = Command::new("ip").args(args).status().expect("`ip` runs");
            assert!(status.success(), "ip {args:?} (the test needs root)");
        };
        let (near, far) = (format!("10.{n}.{m}.1/24"), format!("10.{n}.{m}.2/24"));
        run(&["netns", "add", &ns]);
        run(&["link", "add", &here, "type", "veth", "peer", "name", &there]);
        run(&["link", "set", &there, "netns", &ns]);
        run(&["addr", "add", &near, "dev", &here]);
        run(&["link", "set", &here, "up"]);
        run(&["netns", "exec", &ns, "ip", "addr", "add", &far, "dev", &there]);
        run(&["netns", "exec", &ns, "ip", "link", "set", &there, "up"]);
        // Its loopback too: etcd's HTTP gateway calls its own gRPC server.
        run(&["netns", "exec", &ns, "ip", "link", "set", "lo", "up"]);
        let addr = ([10, n as u8, m as u8, 2], 8080).into();
        Sandbox::serve(dir, name, addr, Some((ns, here)))
    }

    fn serve(dir: &std::path::Path, name: &str, addr: std::net::SocketAddr, host: Option<(String, String)>) -> Sandbox {
        let root = dir.join("sandbox");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("whoami"), format!("sandbox {name}")).unwrap();
        let mut command = match &host {
            Some((ns, _)) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", ns, "python3"]);
                command
            }
            None => Command::new("python3"),
        };
        let process = command
            .args(["-m", "http.server", &addr.port().to_string(), "--bind"])
            .arg(addr.ip().to_string())
            .arg("--directory")
            .arg(&root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 runs");
        while std::net::TcpStream::connect(addr).is_err() {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Sandbox { process, addr, host }
    }

    /// Cuts the network to the sandbox's host (`up: false`) or restores
    /// it, on the far side, as a router that goes away does: this side's
    /// end stays up and its packets go nowhere.
    pub fn network(&self, up: bool) {
        let (ns, here) = self.host.as_ref().expect("a sandbox on a host of its own");
        let there = format!("{}b", here.trim_end_matches('a'));
        let state = if up { "up" } else { "down" };
        let status = Command::new("ip")
            .args(["netns", "exec", ns, "ip", "link", "set", &there, state])
            .status()
            .expect("`ip` runs");
        assert!(status.success(), "ip link set {there} {state}");
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `command` with `args`, run on the sandbox's host.
    pub fn command(&self, command: &str) -> Command {
        match &self.host {
            Some((ns, _)) => {
                let mut run = Command::new("ip");
                run.args(["netns", "exec", ns, command]);
                run
            }
            None => Command::new(command),
        }
    }

    /// An etcd member on the sandbox's host, its data in `dir`, once it
    /// serves: the process, and its client address.
    pub fn etcd(&self, dir: &std::path::Path) -> (Member, String) {
        let ip = self.addr.ip();
        let (client, peer) = (format!("{ip}:2379"), format!("http://{ip}:2380"));
        let mut command = match &self.host {
            Some((ns, _)) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", ns, "etcd"]);
                command
            }
            None => Command::new("etcd"),
        };
        let process = command
            .arg("--data-dir")
            .arg(dir.join("sandbox-etcd"))
            .args(["--listen-client-urls", &format!("http://{client}")])
            .args(["--advertise-client-urls", &format!("http://{client}")])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("default={peer}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd runs (hint: apt-get install etcd-server)");
        let cluster = devmesh::remote::etcd::Cluster::new(std::slice::from_ref(&client));
        let deadline = std::time::Instant::now() + crate::harness::DEADLINE;
        while cluster
            .call("/v3/kv/range", &serde_json::json!({ "key": "eA==" }))
            .is_err()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "etcd on the sandbox's host never served"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        (Member(process), client)
    }
}

/// A process killed when dropped.
pub struct Member(pub Child);

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
        if let Some((ns, here)) = &self.host {
            let _ = Command::new("ip").args(["link", "del", here]).status();
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Adds `section` to the fixture's `devmesh.toml`.
pub fn add_config(dir: &std::path::Path, section: &str) {
    let mut config = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.join("devmesh.toml"))
        .unwrap();
    writeln!(config, "\n{section}").unwrap();
}

/// The front port of `service`, which the registry lists as remote.
pub fn remote_front(mesh: &Mesh, service: &str) -> u16 {
    let registry = read_json(&mesh.state().join("registry.json"));
    let entry = &registry["services"][service];
    assert_eq!(entry["status"], "remote", "{registry}");
    let url = entry["url"].as_str().expect("a URL");
    url.rsplit(':').next().and_then(|p| p.parse().ok()).expect("a port")
}

#[test]
fn a_service_moves_between_here_and_the_sandbox_with_no_failed_request() {
    let dir = fixture("mesh");
    let sandbox = Sandbox::on_a_host_of_its_own(dir.path(), "beta");
    // The sandbox's registry, on the sandbox's host, knows gamma (there
    // only); beta runs here and there.
    let (_etcd, etcd) = sandbox.etcd(dir.path());
    let config = format!("[remote.etcd]\nendpoints = [\"{etcd}\"]\nnamespace = \"sandbox\"\nlease = \"120s\"");
    let path = dir.path().join("sandbox.toml");
    std::fs::write(&path, &config).unwrap();
    let registry = devmesh::config::Config::load(&path).unwrap().remote.etcd.unwrap();
    let mut gamma = devmesh::remote::etcd::Registration::new(&registry);
    gamma.register(&[("gamma".into(), sandbox.url())]).unwrap();
    add_config(
        dir.path(),
        &format!("[remote.static]\nbeta = \"{}\"\n\n{config}", sandbox.url()),
    );
    let mesh = Mesh::start(dir, &["alpha", "beta"], &["beta", "alpha"]);
    let beta = mesh.front("beta");
    let here = format!("beta {}", mesh.pid("beta"));
    let whoami = || get(beta, "/whoami").1;
    assert!(whoami().starts_with(&here), "auto: here while it runs");

    // gamma: a front port of its own, in the registry as remote.
    let gamma_port = remote_front(&mesh, "gamma");
    assert_ne!(gamma_port, sandbox.addr.port(), "a front port, not the sandbox's own");
    assert_eq!(get(gamma_port, "/whoami"), (200, "sandbox beta".to_owned()));

    let switched = text(&mesh.cli(&["mode", "beta", "remote"]));
    assert!(
        switched.contains("beta: mode remote, traffic goes remote"),
        "{switched}"
    );
    assert_eq!(whoami(), "sandbox beta");
    let ps = text(&mesh.cli(&["ps"]));
    let row = ps.lines().find(|l| l.starts_with("beta")).unwrap_or_default();
    assert!(row.contains("remote") && row.contains(&sandbox.url()), "{ps}");
    let refused = mesh.fails(&["mode", "alpha", "remote"], 1);
    assert!(refused.contains("no copy in the sandbox"), "{refused}");

    // A steady load through alpha, which calls beta, while beta's traffic
    // moves back and forth ten times: no request fails.
    let alpha = mesh.front("alpha");
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load: Vec<_> = (0..2)
        .map(|_| {
            let (stop, sent, failed) = (Arc::clone(&stop), Arc::clone(&sent), Arc::clone(&failed));
            std::thread::spawn(move || {
                let mut seen = (0, 0);
                while !stop.load(Ordering::Relaxed) {
                    let (status, body) = get(alpha, "/peer");
                    sent.fetch_add(1, Ordering::Relaxed);
                    match (status, body.contains("sandbox beta")) {
                        (200, true) => seen.1 += 1,
                        (200, false) => seen.0 += 1,
                        _ => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                seen
            })
        })
        .collect();
    for round in 0..10 {
        let mode = if round % 2 == 0 { "local" } else { "remote" };
        let output = mesh.cli(&["mode", "beta", mode]);
        assert!(output.status.success(), "{}", text(&output));
        // Let some requests go each way.
        let at = sent.load(Ordering::Relaxed);
        while sent.load(Ordering::Relaxed) < at + 5 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
    stop.store(true, Ordering::Relaxed);
    let seen = load
        .into_iter()
        .map(|t| t.join().unwrap())
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "{} sent",
        sent.load(Ordering::Relaxed)
    );
    assert!(
        seen.0 > 0 && seen.1 > 0,
        "answers from here and from the sandbox: {seen:?}"
    );

    // Calls to the sandbox are inspected like any other.
    let remote_calls = exchanges(&mesh, 1, |e| {
        e["service"] == "gamma" && e["path"] == "/whoami" && e["status"] == 200
    });
    assert_eq!(remote_calls[0]["caller"], "external");

    // The page switches it too, and says what a restart did.
    let mut browser = crate::browser::Browser::open(&crate::inspector::page(&mesh));
    browser.wait_until(
        "document.querySelector('.svc[data-service=beta] select.mode') !== null",
        "beta's mode control",
    );
    browser.wait_until(
        "document.getElementById('backends').innerText.includes('etcd') && \
         document.getElementById('backends').innerText.includes('gamma')",
        "the remote backends and what they know",
    );
    browser.eval(
        "(() => { const s = document.querySelector('.svc[data-service=beta] select.mode'); \
         s.value = 'remote'; s.dispatchEvent(new Event('change', { bubbles: true })); })()",
    );
    browser.wait_until(
        "document.body.innerText.includes('beta: mode remote, traffic goes remote')",
        "the page's switch to remote",
    );
    browser.wait_until(
        &format!(
            "document.querySelector('.svc[data-service=beta] .meta').innerText.includes('traffic → {}')",
            sandbox.url()
        ),
        "beta's card saying where its traffic goes",
    );
    assert_eq!(whoami(), "sandbox beta");
    browser.eval("document.querySelector('.svc[data-service=alpha] button.restart').click()");
    browser.wait_until(
        "document.body.innerText.includes('alpha: restarted (pid ')",
        "what the restart did",
    );
    eprintln!("screenshot: {}", browser.screenshot("modes").display());

    // auto: when the copy here stops, the sandbox's serves.
    let output = mesh.cli(&["mode", "beta", "auto"]);
    assert!(output.status.success(), "{}", text(&output));
    assert!(whoami().starts_with("beta "), "auto: here while it runs");
    let output = mesh.cli(&["stop", "beta"]);
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(whoami(), "sandbox beta", "auto: the sandbox's while it is stopped here");

    // A service put in etcd while the run is up gets a front port (for
    // services that do not link devmesh with etcd), and loses it when its
    // key goes; back, it has the same port.
    let mut epsilon = devmesh::remote::etcd::Registration::new(&registry);
    epsilon.register(&[("epsilon".into(), sandbox.url())]).unwrap();
    let appeared = mesh.output.wait_for(1, "epsilon's front port", |l| {
        l.contains("epsilon: appeared in the sandbox")
    });
    let epsilon_port = remote_front(&mesh, "epsilon");
    assert!(appeared.contains(&format!("127.0.0.1:{epsilon_port}")), "{appeared}");
    assert_eq!(get(epsilon_port, "/whoami"), (200, "sandbox beta".to_owned()));
    let ps = text(&mesh.cli(&["ps"]));
    assert!(
        ps.lines()
            .any(|l| l.starts_with("epsilon") && l.contains(&sandbox.url())),
        "{ps}"
    );
    let dns_port = read_json(&mesh.state().join("ports.json"))["@dns"].as_u64().unwrap() as u16;
    let dns = crate::dns::dig(dns_port, &["_epsilon._tcp.devmesh", "SRV"]);
    assert!(dns.contains(&format!(" {epsilon_port} ")), "{dns}");
    epsilon.revoke().unwrap();
    // gamma's front port too: it was in etcd when the run started.
    gamma.revoke().unwrap();
    for name in ["epsilon", "gamma"] {
        mesh.output.wait_for(1, "the front port closed", |l| {
            l.contains(&format!("{name}: gone from the sandbox; its front port is closed"))
        });
    }
    let registry_now = read_json(&mesh.state().join("registry.json"));
    assert!(registry_now["services"].get("epsilon").is_none(), "{registry_now}");
    assert!(registry_now["services"].get("gamma").is_none(), "{registry_now}");
    for port in [epsilon_port, gamma_port] {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "{port} is closed"
        );
    }
    let ps = text(&mesh.cli(&["ps"]));
    assert!(
        !ps.lines().any(|l| l.starts_with("epsilon") || l.starts_with("gamma")),
        "{ps}"
    );
    epsilon.register(&[("epsilon".into(), sandbox.url())]).unwrap();
    mesh.output
        .wait_for(2, "epsilon back", |l| l.contains("epsilon: appeared in the sandbox"));
    assert_eq!(remote_front(&mesh, "epsilon"), epsilon_port, "the port it had");
    assert_eq!(get(epsilon_port, "/whoami"), (200, "sandbox beta".to_owned()));
}

/// A service the workspace uses from a DNS SRV server (Debian's dnsmasq
/// here, as Consul's DNS would be): a front port to where its record says.
#[test]
fn a_service_found_by_dns_srv_gets_a_front_port() {
    let dir = fixture("mesh");
    let sandbox = Sandbox::start(dir.path(), "delta");
    let dns_port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = Member(dnsmasq(dns_port, sandbox.addr.port()));
    add_config(
        dir.path(),
        &format!(
            "[remote.dns]\nserver = \"127.0.0.1:{dns_port}\"\ndomain = \"sandbox.test\"\nservices = [\"delta\", \"nosuch\"]"
        ),
    );
    let mesh = Mesh::start(dir, &["beta"], &["beta"]);
    let port = remote_front(&mesh, "delta");
    assert_eq!(get(port, "/whoami"), (200, "sandbox delta".to_owned()));
    let ps = text(&mesh.cli(&["ps"]));
    assert!(
        ps.lines()
            .any(|l| l.starts_with("delta") && l.contains(&format!("remote → {}", sandbox.url()))),
        "{ps}"
    );
    let said = std::fs::read_to_string(mesh.state().join("logs/devmesh.log")).unwrap();
    assert!(
        said.contains("nosuch: DNS SRV `_<svc>._tcp.sandbox.test`") && said.contains("has no record of it"),
        "a name with no record is said: {said}"
    );
    assert!(
        ps.contains(&format!(
            "DNS SRV `_<svc>._tcp.sandbox.test` at 127.0.0.1:{dns_port}: delta"
        )),
        "ps shows the backend and what it knows: {ps}"
    );
    // The server goes: ps says its answers are stale, and the front port
    // still reaches the sandbox.
    drop(server);
    let deadline = std::time::Instant::now() + crate::harness::DEADLINE;
    while !text(&mesh.cli(&["ps"])).contains("STALE: it does not answer") {
        assert!(
            std::time::Instant::now() < deadline,
            "ps never said the DNS backend is stale"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(get(port, "/whoami"), (200, "sandbox delta".to_owned()));

    // Back, with delta moved: its front port follows the record.
    let elsewhere = tempfile::tempdir().unwrap();
    let moved = Sandbox::start(elsewhere.path(), "delta moved");
    let _server = Member(dnsmasq(dns_port, moved.addr.port()));
    let deadline = std::time::Instant::now() + crate::harness::DEADLINE;
    while get(port, "/whoami").1 != "sandbox delta moved" {
        assert!(
            std::time::Instant::now() < deadline,
            "the front port never followed delta"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// dnsmasq on 127.0.0.1:`port`, answering `_delta._tcp.sandbox.test` with
/// `delta_port` on 127.0.0.1.
fn dnsmasq(port: u16, delta_port: u16) -> Child {
    Command::new("dnsmasq")
        .args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--pid-file=",
            "--no-resolv",
            "--no-hosts",
            "--user=root",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            "--local=/sandbox.test/",
            "--host-record=delta.sandbox.test,127.0.0.1",
        ])
        .arg(format!("--port={port}"))
        .arg(format!(
            "--srv-host=_delta._tcp.sandbox.test,delta.sandbox.test,{delta_port}"
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("dnsmasq runs (hint: apt-get install dnsmasq-base)")
}

/// A service marked `share = true` is in the team's etcd while the
/// supervisor runs; killed, the supervisor stops renewing its lease and it
/// is gone within it; a clean stop takes it away at once.
#[test]
fn a_shared_service_is_in_etcd_while_its_supervisor_lives() {
    use devmesh::remote::etcd::Cluster;
    let port = |()| {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (client, peer) = (port(()), port(()));
    let data = tempfile::tempdir().unwrap();
    let _etcd = Member(
        Command::new("etcd")
            .arg("--data-dir")
            .arg(data.path())
            .args(["--listen-client-urls", &format!("http://127.0.0.1:{client}")])
            .args(["--advertise-client-urls", &format!("http://127.0.0.1:{client}")])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd runs (hint: apt-get install etcd-server)"),
    );
    let cluster = Cluster::new(&[format!("127.0.0.1:{client}")]);
    // `/devmesh/team/services/beta`, and the end of its range.
    let (key, end) = (
        "L2Rldm1lc2gvdGVhbS9zZXJ2aWNlcy9iZXRh",
        "L2Rldm1lc2gvdGVhbS9zZXJ2aWNlcy9iZXRi",
    );
    // How many keys are beta's; `None` while etcd does not answer.
    let count = || {
        cluster
            .call("/v3/kv/range", &serde_json::json!({ "key": key, "range_end": end }))
            .ok()
            .map(|a| a["count"].as_str().unwrap_or("0").to_owned())
    };
    let deadline = std::time::Instant::now() + crate::harness::DEADLINE;
    let within = |what: &str, want: &str| {
        while count().as_deref() != Some(want) {
            assert!(std::time::Instant::now() < deadline, "{what}");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    within("etcd serves", "0");

    let dir = fixture("mesh");
    let config = format!(
        "[services.beta]\nshare = true\n\n[remote.etcd]\nendpoints = [\"127.0.0.1:{client}\"]\nnamespace = \"team\"\nlease = \"2s\""
    );
    add_config(dir.path(), &config);
    // Another developer's service, in the registry before this run starts.
    let (one, two) = (
        Sandbox::start(&dir.path().join("one"), "vault one"),
        Sandbox::start(&dir.path().join("two"), "vault two"),
    );
    let path = dir.path().join("theirs.toml");
    std::fs::write(&path, config.replace("lease = \"2s\"", "lease = \"60s\"")).unwrap();
    let theirs = devmesh::config::Config::load(&path).unwrap().remote.etcd.unwrap();
    let mut vault = devmesh::remote::etcd::Registration::new(&theirs);
    vault.register(&[("vault".into(), one.url())]).unwrap();

    let mut mesh = Mesh::start(dir, &["beta"], &["beta"]);
    within("beta registered", "1");
    let ps = text(&mesh.cli(&["ps"]));
    assert!(
        ps.contains("etcd `/devmesh/team/services/`") && ps.contains("beta, vault"),
        "{ps}"
    );

    // vault: a front port here, which follows it when it moves.
    let front = remote_front(&mesh, "vault");
    assert_eq!(get(front, "/whoami"), (200, "sandbox vault one".to_owned()));
    let mut moved = devmesh::remote::etcd::Registration::new(&theirs);
    moved.register(&[("vault".into(), two.url())]).unwrap();
    while get(front, "/whoami").1 != "sandbox vault two" {
        assert!(
            std::time::Instant::now() < deadline,
            "the front port never followed vault"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let killed = std::time::Instant::now();
    mesh.signal_and_wait(libc::SIGKILL);
    within("beta gone with its lease", "0");
    assert!(
        killed.elapsed() < std::time::Duration::from_secs(10),
        "{:?}",
        killed.elapsed()
    );
}

/// A sandbox service on HTTPS, signed by the sandbox's own CA: its front
/// port here speaks plain HTTP to callers and TLS to it (SNI and Host its
/// URL's host); one whose certificate does not name it gets a 502, and the
/// run says why.
#[test]
fn an_https_service_in_the_sandbox_is_reached_over_tls_with_its_ca() {
    let dir = fixture("mesh");
    let certs = dir.path().join("certs");
    certificates(&certs, "DNS:localhost");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = "import http.server, ssl, sys\n\
        class H(http.server.BaseHTTPRequestHandler):\n    \
            def do_GET(self):\n        \
                body = ('sandbox tls, host ' + self.headers['Host']).encode()\n        \
                self.send_response(200); self.send_header('content-length', str(len(body))); self.end_headers(); self.wfile.write(body)\n    \
            def log_message(self, *args): pass\n\
        server = http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), H)\n\
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); context.load_cert_chain(sys.argv[2], sys.argv[3])\n\
        server.socket = context.wrap_socket(server.socket, server_side=True)\n\
        server.serve_forever()\n";
    let _sandbox = Member(
        Command::new("python3")
            .args(["-c", server, &port.to_string()])
            .arg(certs.join("server.pem"))
            .arg(certs.join("server.key"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 runs"),
    );
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    add_config(
        dir.path(),
        &format!(
            "[remote]\nca = \"certs/ca.pem\"\n\n[remote.static]\nvault = \"https://localhost:{port}\"\nbare = \"https://127.0.0.1:{port}\""
        ),
    );
    let mesh = Mesh::start(dir, &["beta"], &["beta"]);
    let vault = remote_front(&mesh, "vault");
    assert_eq!(
        get(vault, "/whoami"),
        (200, format!("sandbox tls, host localhost:{port}"))
    );
    let calls = exchanges(&mesh, 1, |e| e["service"] == "vault" && e["status"] == 200);
    assert_eq!(calls[0]["path"], "/whoami", "captured in clear");

    let (status, body) = get(remote_front(&mesh, "bare"), "/whoami");
    assert_eq!(status, 502, "{body}");
    let said = std::fs::read_to_string(mesh.state().join("logs/devmesh.log")).unwrap();
    assert!(said.contains("bare: TLS to `127.0.0.1`"), "{said}");
}

/// A CA (`ca.pem`) and a certificate it signed for `names` (an OpenSSL
/// subjectAltName: `DNS:localhost,IP:10.0.0.2`), `server.pem` and its
/// `server.key`, in `dir`.
pub fn certificates(dir: &std::path::Path, names: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let openssl = |args: &str| {
        let output = Command::new("openssl")
            .args(args.split(' '))
            .current_dir(dir)
            .output()
            .expect("openssl runs");
        assert!(
            output.status.success(),
            "openssl {args}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    openssl("req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=devmesh-test-CA");
    openssl("req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=devmesh-test");
    std::fs::write(dir.join("ext.cnf"), format!("subjectAltName={names}\n")).unwrap();
    openssl(
        "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile ext.cnf",
    );
}
