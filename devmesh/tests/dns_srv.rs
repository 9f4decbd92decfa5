//! The DNS SRV backend against a DNS server nobody here wrote: Debian's
//! `dnsmasq` (`apt-get install dnsmasq-base`), with SRV records of its
//! own, a TTL of one second, restarted with another answer, and stopped.

use std::net::UdpSocket;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use devmesh::config::DnsConfig;
use devmesh::remote::{Backend, DnsSrv};
use figment::providers::Format;

/// dnsmasq on 127.0.0.1:`port`, authoritative for `sandbox.test`, where
/// `_payments._tcp` is at `payments_port`; killed when dropped.
struct Dnsmasq(Child);

impl Dnsmasq {
    fn start(port: u16, payments_port: u16) -> Dnsmasq {
        let child = Command::new("dnsmasq")
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
                "--local-ttl=1",
                "--host-record=payments.sandbox.test,127.0.0.1",
            ])
            .arg(format!("--port={port}"))
            .arg(format!(
                "--srv-host=_payments._tcp.sandbox.test,payments.sandbox.test,{payments_port}"
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq runs (hint: apt-get install dnsmasq-base)");
        Dnsmasq(child)
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn config(port: u16, services: &[&str]) -> DnsConfig {
    let toml = format!(
        "server = \"127.0.0.1:{port}\"\ndomain = \"sandbox.test\"\nservices = [{}]",
        services
            .iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(",")
    );
    toml_config(&toml)
}

fn toml_config(toml: &str) -> DnsConfig {
    let config: devmesh::config::Config =
        figment::Figment::from(figment::providers::Toml::string(&format!("[remote.dns]\n{toml}")))
            .extract()
            .unwrap();
    config.remote.dns.unwrap()
}

/// Looks up `name` until `check` holds, for up to 15 s.
fn eventually(backend: &DnsSrv, name: &str, what: &str, check: impl Fn(Option<&devmesh::Endpoint>) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let found = backend.lookup(name);
        if check(found.as_ref()) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: still {found:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn answers_are_kept_fresh_by_their_ttl_and_kept_stale_when_the_server_goes() {
    let port = free_udp_port();
    let server = Dnsmasq::start(port, 8081);
    let backend = DnsSrv::new(&config(port, &["payments"])).unwrap();
    eventually(&backend, "payments", "the first answer", |e| {
        e.is_some_and(|e| e.url() == "http://127.0.0.1:8081")
    });
    assert_eq!(backend.lookup("nosuch"), None, "NXDOMAIN: no such service");
    assert_eq!(backend.names(), ["payments"]);

    // The record changes: within its TTL (1 s), the new answer.
    drop(server);
    let server = Dnsmasq::start(port, 8082);
    eventually(&backend, "payments", "the changed answer", |e| {
        e.is_some_and(|e| e.url() == "http://127.0.0.1:8082")
    });

    // The server goes: the last answer stays, marked stale.
    drop(server);
    eventually(&backend, "payments", "a stale answer", |e| {
        e.is_some_and(|e| {
            e.url() == "http://127.0.0.1:8082"
                && matches!(e.source(), devmesh::Source::Remote { backend } if backend.contains("stale"))
        })
    });

    // It comes back: so does a fresh answer.
    let _server = Dnsmasq::start(port, 8083);
    eventually(&backend, "payments", "a fresh answer again", |e| {
        e.is_some_and(|e| {
            e.url() == "http://127.0.0.1:8083"
                && matches!(e.source(), devmesh::Source::Remote { backend } if !backend.contains("stale"))
        })
    });
}

#[test]
fn a_server_that_answers_garbage_or_nothing_is_no_answer_and_no_panic() {
    let garbage = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = garbage.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((_, from)) = garbage.recv_from(&mut buf) {
            let _ = garbage.send_to(b"\x12\x34\x81\x80garbage", from);
        }
    });
    let backend = DnsSrv::new(&config(port, &[])).unwrap();
    assert_eq!(backend.lookup("payments"), None);

    let silent = free_udp_port();
    let backend = DnsSrv::new(&config(silent, &[])).unwrap();
    let began = Instant::now();
    assert_eq!(backend.lookup("payments"), None);
    assert!(
        began.elapsed() < Duration::from_secs(2),
        "a first lookup waits a bounded time"
    );
    let began = Instant::now();
    assert_eq!(backend.lookup("payments"), None);
    assert!(
        began.elapsed() < Duration::from_millis(50),
        "then it answers from memory"
    );
}
