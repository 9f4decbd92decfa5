//! Callback URLs through the relay: the relay runs on a sandbox host (a
//! network namespace); a service here exposed through it is called back
//! from there, at a URL that stays the same when the relay and the
//! supervisor restart; a caller without a team token, and a supervisor
//! with a wrong one, are refused.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::harness::{DEADLINE, Mesh, exchanges, fixture, read_json, text};
use crate::remote::{Member, Sandbox};

pub const TOKEN: &str = "alice-0123456789abcdef";

#[test]
fn an_exposed_service_is_called_back_at_the_same_url_across_restarts() {
    let dir = fixture("mesh");
    let sandbox = Sandbox::on_a_host_of_its_own(dir.path(), "relay host");
    let ip = sandbox.addr.ip();
    let (relay_dir, config) = relay_config(ip, "\n[dial]\nalice = [\"127.0.0.1:9000\"]\n");
    let start_relay = || start_relay(&sandbox, &config, (ip, 7000).into());
    let relay = start_relay();
    // The team's registry, on the sandbox host too.
    let (_etcd, etcd) = sandbox.etcd(relay_dir.path());

    // A service only the sandbox reaches: on its host's own loopback.
    let hidden = relay_dir.path().join("hidden");
    std::fs::create_dir_all(&hidden).unwrap();
    std::fs::write(hidden.join("whoami"), "sandbox-only vault").unwrap();
    let _vault = Member(
        sandbox
            .command("python3")
            .args(["-m", "http.server", "9000", "--bind", "127.0.0.1", "--directory"])
            .arg(&hidden)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 runs"),
    );
    std::fs::write(dir.path().join("tunnel.token"), TOKEN).unwrap();
    let mut toml = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.path().join("devmesh.toml"))
        .unwrap();
    std::io::Write::write_all(
        &mut toml,
        format!(
            "\n[services.beta]\nexpose = true\nshare = true\n\n[tunnel]\nrelay = \"{ip}:7000\"\ntoken_file = \"tunnel.token\"\nnamespace = \"alice\"\nreach = [\"vault\", \"gamma\"]\n\n[remote.etcd]\nendpoints = [\"{etcd}\"]\nnamespace = \"alice\"\n\n[remote.static]\nvault = \"http://127.0.0.1:9000\"\ngamma = \"http://127.0.0.1:9001\"\n"
        )
        .as_bytes(),
    )
    .unwrap();
    let token_file = dir.path().join("tunnel.token");
    let mut mesh = Mesh::start(dir, &["beta"], &["beta"]);
    let callback = callback_url(&mesh);
    assert!(callback.starts_with(&format!("http://{ip}:310")), "{callback}");

    // A service in the sandbox calls back, with the team's token.
    let pid = mesh.pid("beta");
    let call = |token: Option<&str>| {
        let mut curl = sandbox.command("curl");
        curl.args(["-s", "-m", "5"]);
        if let Some(token) = token {
            curl.args(["-H", &format!("x-devmesh-access: {token}")]);
        }
        let output = curl.arg(format!("{callback}/whoami")).output().expect("curl runs");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    assert!(
        call(Some(TOKEN)).starts_with(&format!("beta {pid}")),
        "{}",
        call(Some(TOKEN))
    );
    assert!(call(None).contains("this tunnel is private"), "{}", call(None));
    assert!(call(Some("not-a-team-token")).contains("this tunnel is private"));
    let ps = crate::harness::text(&mesh.cli(&["ps"]));
    assert!(
        ps.contains(&format!("tunnel to {ip}:7000: connected")) && ps.contains(&format!("beta at {callback}")),
        "{ps}"
    );
    // The other way: a service only the sandbox reaches, through its
    // front port here and the relay; one the relay may not dial is refused.
    let vault = crate::remote::remote_front(&mesh, "vault");
    let deadline = Instant::now() + DEADLINE;
    while crate::harness::get(vault, "/whoami") != (200, "sandbox-only vault".to_owned()) {
        assert!(Instant::now() < deadline, "{:?}", crate::harness::get(vault, "/whoami"));
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, body) = crate::harness::get(crate::remote::remote_front(&mesh, "gamma"), "/whoami");
    assert!(status == 403 && body.contains("may not be dialed"), "{status} {body}");
    let ps = text(&mesh.cli(&["ps"]));
    assert!(
        ps.lines()
            .any(|l| l.starts_with("vault") && l.contains("remote via relay → http://127.0.0.1:9000")),
        "{ps}"
    );

    // Shared in etcd at its public URL, which the sandbox can call.
    let cluster = devmesh::remote::etcd::Cluster::new(std::slice::from_ref(&etcd));
    // `/devmesh/alice/services/beta`.
    let key = serde_json::json!({ "key": "L2Rldm1lc2gvYWxpY2Uvc2VydmljZXMvYmV0YQ==" });
    let deadline = Instant::now() + DEADLINE;
    loop {
        let found = cluster.call("/v3/kv/range", &key).ok();
        let value = found
            .as_ref()
            .and_then(|f| f["kvs"][0]["value"].as_str())
            .map(str::to_owned);
        let decoded = value.map(|v| String::from_utf8(base64_decode(&v)).unwrap_or_default());
        if decoded.as_deref() == Some(&serde_json::json!({ "url": callback }).to_string()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "beta is not in etcd at its public URL: {decoded:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // It came in through beta's front port: the inspector has it.
    let seen = exchanges(&mesh, 1, |e| {
        e["service"] == "beta" && e["path"] == "/whoami" && e["status"] == 200
    });
    assert_eq!(seen[0]["caller"], "tunnel");

    // The relay restarts: the same URL works again.
    drop(relay);
    let _relay = start_relay();
    let deadline = Instant::now() + DEADLINE;
    while !call(Some(TOKEN)).starts_with("beta ") {
        assert!(
            Instant::now() < deadline,
            "the tunnel never came back after the relay restarted"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // The supervisor restarts: the same URL.
    mesh.signal_and_wait(libc::SIGINT);
    mesh.run(&["beta"]);
    mesh.wait_ready("beta", 2);
    let deadline = Instant::now() + DEADLINE;
    while callback_url(&mesh) != callback || !call(Some(TOKEN)).starts_with("beta ") {
        assert!(
            Instant::now() < deadline,
            "the same URL did not come back with the supervisor"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // The relay down, the supervisor restarts: beta has its URL at once,
    // the one the relay keeps for it, before the link is up.
    drop(_relay);
    mesh.signal_and_wait(libc::SIGINT);
    mesh.run(&["beta"]);
    mesh.wait_ready("beta", 3);
    assert_eq!(callback_url(&mesh), callback, "remembered from the last run");
    let _relay = start_relay();
    let deadline = Instant::now() + DEADLINE;
    while !call(Some(TOKEN)).starts_with("beta ") {
        assert!(Instant::now() < deadline, "the tunnel never came up with the relay");
        std::thread::sleep(Duration::from_millis(100));
    }

    // A wrong token: the supervisor is refused, and says so.
    mesh.signal_and_wait(libc::SIGINT);
    std::fs::write(&token_file, "a-wrong-token-of-some-length").unwrap();
    mesh.run(&["beta"]);
    mesh.wait_ready("beta", 4);
    let deadline = Instant::now() + DEADLINE;
    loop {
        let said = std::fs::read_to_string(mesh.state().join("logs/devmesh.log")).unwrap_or_default();
        if said.contains("refused: unknown token") {
            break;
        }
        assert!(Instant::now() < deadline, "the refusal was never said: {said}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A relay's config on `ip`, by port (31000–31099), with the team's token
/// ([`TOKEN`], alice's) and `more`: its folder, and the file.
pub fn relay_config(ip: std::net::IpAddr, more: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let relay_dir = tempfile::tempdir().unwrap();
    std::fs::write(relay_dir.path().join("tokens"), format!("# the team\nalice: {TOKEN}\n")).unwrap();
    let config = relay_dir.path().join("relay.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"{ip}:7000\"\npublic_host = \"{ip}\"\nports = \"31000-31099\"\ntokens = \"{}\"\ndata = \"{}\"\n{more}",
            relay_dir.path().join("tokens").display(),
            relay_dir.path().join("data").display()
        ),
    )
    .unwrap();
    (relay_dir, config)
}

/// The relay binary on the sandbox's host, with config `config`, once
/// it listens at `control`.
pub fn start_relay(sandbox: &Sandbox, config: &std::path::Path, control: std::net::SocketAddr) -> Member {
    let relay = Member(
        sandbox
            .command(env!("CARGO_BIN_EXE_devmesh-relay"))
            .arg("--config")
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the relay starts"),
    );
    let deadline = Instant::now() + DEADLINE;
    while std::net::TcpStream::connect(control).is_err() {
        assert!(Instant::now() < deadline, "the relay never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    relay
}

/// The relay with `[tls]` and `[domain]`: the supervisor speaks TLS to
/// it (with the team's CA, `[tunnel] ca`), beta is at
/// `https://beta--alice.t.test:8443`, and a caller in the sandbox gets in
/// with the team's token or after logging in, with a cookie jar as a
/// browser would.
#[test]
fn a_tunnel_by_host_over_tls_lets_a_caller_in_after_a_login() {
    let dir = fixture("mesh");
    let sandbox = Sandbox::on_a_host_of_its_own(dir.path(), "relay host");
    let ip = sandbox.addr.ip();
    crate::remote::certificates(&dir.path().join("certs"), &format!("DNS:*.t.test,IP:{ip}"));
    let relay_dir = tempfile::tempdir().unwrap();
    std::fs::write(relay_dir.path().join("tokens"), format!("alice: {TOKEN}\n")).unwrap();
    let config = relay_dir.path().join("relay.toml");
    let certs = dir.path().join("certs");
    std::fs::write(
        &config,
        format!(
            "listen = \"{ip}:7000\"\npublic_host = \"{ip}\"\ntokens = \"{}\"\ndata = \"{}\"\n\n[domain]\nname = \"t.test\"\nlisten = \"{ip}:8443\"\n\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            relay_dir.path().join("tokens").display(),
            relay_dir.path().join("data").display(),
            certs.join("server.pem").display(),
            certs.join("server.key").display(),
        ),
    )
    .unwrap();
    let _relay = start_relay(&sandbox, &config, (ip, 7000).into());
    crate::remote::add_config(
        dir.path(),
        &format!(
            "\n[services.beta]\nexpose = true\n\n[tunnel]\nrelay = \"{ip}:7000\"\nnamespace = \"alice\"\nca = \"certs/ca.pem\"\n"
        ),
    );
    let mesh = Mesh::start_with_env(dir, &["beta"], &[("DEVMESH_TUNNEL_TOKEN", TOKEN)], &["beta"]);
    let callback = callback_url(&mesh);
    assert_eq!(callback, "https://beta--alice.t.test:8443");

    let jar = relay_dir.path().join("cookies");
    let curl = |args: &[&str]| {
        let output = sandbox
            .command("curl")
            .args(["-s", "-m", "5", "--cacert"])
            .arg(certs.join("ca.pem"))
            .args(["--resolve", &format!("beta--alice.t.test:8443:{ip}"), "-b"])
            .arg(&jar)
            .arg("-c")
            .arg(&jar)
            .args(args)
            .output()
            .expect("curl runs");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let whoami = format!("{callback}/whoami");
    let pid = mesh.pid("beta");
    assert!(curl(&[&whoami]).contains("this tunnel is private"));
    let with_token = curl(&["-H", &format!("x-devmesh-access: {TOKEN}"), &whoami]);
    assert!(with_token.starts_with(&format!("beta {pid}")), "{with_token}");
    // A browser's way: sent to the login page, logs in, comes back.
    let page = curl(&["-L", "-H", "accept: text/html", &whoami]);
    assert!(
        page.contains("This tunnel is private") && page.contains("<form"),
        "{page}"
    );
    let logged_in = curl(&[
        "-L",
        "-d",
        &format!("token={TOKEN}&next=/whoami"),
        &format!("{callback}/.devmesh/login"),
    ]);
    assert!(logged_in.starts_with(&format!("beta {pid}")), "{logged_in}");
    assert!(
        curl(&[&whoami]).starts_with(&format!("beta {pid}")),
        "the cookie lets the caller in again"
    );
}

/// beta's callback URL in the registry, once it has one.
pub fn callback_url(mesh: &Mesh) -> String {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let registry = read_json(&mesh.state().join("registry.json"));
        if let Some(url) = registry["services"]["beta"]["callback_url"].as_str() {
            return url.to_owned();
        }
        assert!(Instant::now() < deadline, "beta never got a callback URL: {registry}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    data_encoding::BASE64.decode(text.as_bytes()).unwrap_or_default()
}
