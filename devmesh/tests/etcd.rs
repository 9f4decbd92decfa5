//! The etcd backend and registration against real etcd (Debian's
//! `etcd-server`), members started here on loopback ports: one member,
//! then a cluster of three with members stopped and started.
#![cfg(feature = "etcd")]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use devmesh::config::EtcdConfig;
use devmesh::remote::etcd::{Cluster, Registration, RoutedCopy};
use devmesh::remote::{Backend, Etcd};
use figment::providers::Format;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One etcd member; stopped when dropped.
struct Member {
    name: String,
    client: u16,
    peer: u16,
    dir: PathBuf,
    process: Option<Child>,
}

impl Member {
    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.client)
    }

    fn start(&mut self, cluster: &str) {
        let url = |port| format!("http://127.0.0.1:{port}");
        let process = Command::new("etcd")
            .args(["--name", &self.name, "--initial-cluster-token", "devmesh-test"])
            .arg("--data-dir")
            .arg(&self.dir)
            .args(["--listen-client-urls", &url(self.client)])
            .args(["--advertise-client-urls", &url(self.client)])
            .args(["--listen-peer-urls", &url(self.peer)])
            .args(["--initial-advertise-peer-urls", &url(self.peer)])
            .args(["--initial-cluster", cluster, "--initial-cluster-state", "new"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd runs (hint: apt-get install etcd-server)");
        self.process = Some(process);
    }

    fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `n` members started in `dir`, once they serve.
fn cluster(dir: &Path, n: usize) -> (Vec<Member>, String) {
    let mut members: Vec<Member> = (0..n)
        .map(|i| Member {
            name: format!("m{i}"),
            client: free_port(),
            peer: free_port(),
            dir: dir.join(format!("m{i}")),
            process: None,
        })
        .collect();
    let initial = members
        .iter()
        .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
        .collect::<Vec<_>>()
        .join(",");
    for member in &mut members {
        member.start(&initial);
    }
    wait_serving(&members.iter().map(Member::addr).collect::<Vec<_>>());
    (members, initial)
}

/// Waits until the cluster answers a write through the first of `addrs`
/// that answers.
fn wait_serving(addrs: &[String]) {
    let cluster = Cluster::new(addrs);
    let deadline = Instant::now() + Duration::from_secs(30);
    while cluster
        .call("/v3/kv/put", &serde_json::json!({"key": "cmVhZHk=", "value": "eWVz"}))
        .is_err()
    {
        assert!(Instant::now() < deadline, "etcd never served at {addrs:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn config(addrs: &[String], lease: &str) -> EtcdConfig {
    let endpoints = addrs.iter().map(|a| format!("\"{a}\"")).collect::<Vec<_>>().join(",");
    let toml = format!("[remote.etcd]\nendpoints = [{endpoints}]\nnamespace = \"team\"\nlease = \"{lease}\"");
    let config: devmesh::config::Config = figment::Figment::from(figment::providers::Toml::string(&toml))
        .extract()
        .unwrap();
    config.remote.etcd.unwrap()
}

/// Looks up `name` until `check` holds, for up to 20 s.
fn eventually(backend: &Etcd, name: &str, what: &str, check: impl Fn(Option<&devmesh::Endpoint>) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let found = backend.lookup(name);
        if check(found.as_ref()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: still {found:?} ({})",
            backend.describe()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn url(found: Option<&devmesh::Endpoint>) -> Option<&str> {
    found.map(devmesh::Endpoint::url)
}

#[test]
fn registered_services_are_discovered_watched_and_gone_when_their_lease_ends() {
    let dir = tempfile::tempdir().unwrap();
    let (members, _) = cluster(dir.path(), 1);
    let addrs = vec![members[0].addr()];
    let backend = Etcd::new(&config(&addrs, "2s")).unwrap();

    let mut payments = Registration::new(&config(&addrs, "2s"));
    payments
        .register(&[("payments".into(), "http://10.0.0.9:9001".into())])
        .unwrap();
    eventually(&backend, "payments", "registered", |e| {
        url(e) == Some("http://10.0.0.9:9001")
    });
    assert!(payments.renew().unwrap(), "a live lease renews");

    // A change is seen by the watch, not by asking again.
    let mut moved = Registration::new(&config(&addrs, "30s"));
    moved
        .register(&[("payments".into(), "http://10.0.0.9:9002".into())])
        .unwrap();
    eventually(&backend, "payments", "changed", |e| {
        url(e) == Some("http://10.0.0.9:9002")
    });
    moved.revoke().unwrap();
    eventually(&backend, "payments", "revoked", |e| e.is_none());

    // Not renewed (a killed supervisor): gone within the lease.
    let mut billing = Registration::new(&config(&addrs, "2s"));
    billing
        .register(&[("billing".into(), "http://10.0.0.9:9003".into())])
        .unwrap();
    eventually(&backend, "billing", "registered", |e| e.is_some());
    let registered = Instant::now();
    eventually(&backend, "billing", "expired", |e| e.is_none());
    assert!(registered.elapsed() < Duration::from_secs(10));

    // Developers' copies under the routes, strict or not, as read back.
    let routes = Etcd::routes(&config(&addrs, "30s")).unwrap();
    let copy = |route: &str, strict| RoutedCopy {
        service: "orders".into(),
        route: route.into(),
        url: "http://10.0.0.9:31000".into(),
        strict,
    };
    let mut developers = Registration::new(&config(&addrs, "30s"));
    developers
        .register_with_routes(&[], &[copy("dev-a", false), copy("dev-b", true)])
        .unwrap();
    eventually(&routes, "orders/dev-b", "routed", |e| e.is_some());
    eventually(&routes, "orders/dev-a", "routed", |e| e.is_some());
    assert!(routes.is_strict("orders/dev-b") && !routes.is_strict("orders/dev-a"));
    developers.revoke().unwrap();
    eventually(&routes, "orders/dev-b", "revoked", |e| e.is_none());
    assert!(!routes.is_strict("orders/dev-b"));
}

#[test]
fn a_cluster_of_three_serves_with_one_member_down_and_recovers_from_all_down() {
    let dir = tempfile::tempdir().unwrap();
    let (mut members, initial) = cluster(dir.path(), 3);
    let addrs: Vec<String> = members.iter().map(Member::addr).collect();
    let backend = Etcd::new(&config(&addrs, "60s")).unwrap();
    let mut first = Registration::new(&config(&addrs, "60s"));
    first
        .register(&[("orders".into(), "http://10.0.0.9:9101".into())])
        .unwrap();
    eventually(&backend, "orders", "registered", |e| e.is_some());

    // One member down (the one watched first): the others serve.
    members[0].stop();
    let mut second = Registration::new(&config(&addrs, "60s"));
    second
        .register(&[("search".into(), "http://10.0.0.9:9102".into())])
        .unwrap();
    eventually(&backend, "search", "registered with a member down", |e| e.is_some());

    // All down: the last answers stay, stale.
    for member in &mut members {
        member.stop();
    }
    eventually(&backend, "orders", "stale", |e| {
        e.is_some_and(|e| matches!(e.source(), devmesh::Source::Remote { backend } if backend.contains("stale")))
    });
    assert!(backend.describe().contains("stale"), "{}", backend.describe());

    // All back: discovery recovers by itself.
    for member in &mut members {
        member.start(&initial);
    }
    wait_serving(&addrs);
    let mut third = Registration::new(&config(&addrs, "60s"));
    third
        .register(&[("billing".into(), "http://10.0.0.9:9103".into())])
        .unwrap();
    eventually(&backend, "billing", "seen after recovery", |e| e.is_some());
    eventually(&backend, "orders", "fresh again", |e| {
        e.is_some_and(|e| matches!(e.source(), devmesh::Source::Remote { backend } if !backend.contains("stale")))
    });
}
