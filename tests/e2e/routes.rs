//! One sandbox, many developers: the sandbox's supervisor runs every
//! service, and developer A runs `beta` with `route = true`. A's requests
//! (and anyone's with `baggage: devmesh-route=dev-a`) reach A's `beta`
//! through the relay, in the middle of a chain; every other request the
//! sandbox's own. The relay and etcd run on a sandbox host of their own.

use std::io::{Read, Write};
use std::time::Duration;

use crate::harness::{Mesh, exchanges, fixture, get, text};
use crate::remote::{Sandbox, add_config, remote_front};
use crate::tunnel::{TOKEN, relay_config, start_relay};

/// `GET path` on `port` with `baggage`: the answer's body.
fn get_with_baggage(port: u16, path: &str, baggage: &str) -> String {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("the front port accepts");
    stream.set_read_timeout(Some(crate::harness::DEADLINE)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: x\r\nbaggage: {baggage}\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}

/// Which beta answered alpha's call: its pid, from `alpha got: beta PID …`.
fn beta_of(body: &str) -> u32 {
    body.strip_prefix("alpha got: beta ")
        .and_then(|rest| rest.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no answer from a beta: {body}"))
}

#[test]
fn a_developers_copy_gets_their_requests_and_only_theirs() {
    let (sandbox_dir, a_dir) = (fixture("mesh"), fixture("mesh"));
    let host = Sandbox::on_a_host_of_its_own(sandbox_dir.path(), "relay host");
    let ip = host.addr.ip();
    let (relay_dir, relay_config) = relay_config(ip, "");
    let _relay = start_relay(&host, &relay_config, (ip, 7000).into());
    let (_etcd, etcd) = host.etcd(relay_dir.path());
    let shared = |namespace: &str| {
        format!(
            "[tunnel]\nrelay = \"{ip}:7000\"\ntoken_file = \"tunnel.token\"\nnamespace = \"{namespace}\"\n\n\
             [remote.etcd]\nendpoints = [\"{etcd}\"]\nnamespace = \"team\"\nlease = \"10s\""
        )
    };

    // The sandbox: every service, its own copies.
    std::fs::write(sandbox_dir.path().join("tunnel.token"), TOKEN).unwrap();
    add_config(sandbox_dir.path(), &shared("sandbox"));
    let sandbox = Mesh::start(sandbox_dir, &["alpha", "beta"], &["beta", "alpha"]);
    let (sandbox_alpha, sandbox_beta) = (sandbox.front("alpha"), sandbox.pid("beta"));

    // Developer A: beta here, for A's requests; alpha the sandbox's.
    std::fs::write(a_dir.path().join("tunnel.token"), TOKEN).unwrap();
    add_config(
        a_dir.path(),
        &format!(
            "[services.beta]\nroute = true\n\n{}\n\n[remote.static]\nalpha = \"http://127.0.0.1:{sandbox_alpha}\"",
            shared("dev-a")
        ),
    );
    let a = Mesh::start(a_dir, &["beta"], &["beta"]);
    let a_beta = a.pid("beta");
    let routed = sandbox.output.wait_for(1, "the sandbox following A's route", |l| {
        l.contains("beta: requests with route `dev-a` go to its copy at")
    });
    assert!(routed.contains(&format!("http://{ip}:310")), "{routed}");

    // A's request, through A's front port for the sandbox's alpha, which
    // calls beta passing its baggage on: A's beta answers, in the middle
    // of the chain.
    let a_alpha = remote_front(&a, "alpha");
    let (status, body) = get(a_alpha, "/peer-traced");
    assert_eq!((status, beta_of(&body)), (200, a_beta), "{body}");
    // The sandbox's own requests, and another developer's, never reach A.
    assert_eq!(beta_of(&get(sandbox_alpha, "/peer-traced").1), sandbox_beta);
    let routed_to = |path: &str, baggage: &str| beta_of(&get_with_baggage(sandbox_alpha, path, baggage));
    assert_eq!(routed_to("/peer-traced", "devmesh-route=dev-b"), sandbox_beta);
    // A teammate targets A's copy with the baggage, other members kept.
    assert_eq!(routed_to("/peer-traced", "userId=7, devmesh-route=dev-a"), a_beta);
    // A service that does not pass baggage on: its call takes the route of
    // its one request in flight, as its trace does.
    assert_eq!(routed_to("/peer", "devmesh-route=dev-a"), a_beta);
    // With several in flight, never a guess: 8 clients at once, half of
    // them A's, and no other request ever reaches A's copy.
    std::thread::scope(|s| {
        let clients: Vec<_> = (0..8)
            .map(|i| {
                s.spawn(move || {
                    for _ in 0..10 {
                        let route = if i % 2 == 0 { "dev-a" } else { "dev-b" };
                        let beta = routed_to("/peer", &format!("devmesh-route={route}"));
                        assert!(
                            beta == sandbox_beta || (route == "dev-a" && beta == a_beta),
                            "{route}: {beta}"
                        );
                    }
                })
            })
            .collect();
        for client in clients {
            client.join().unwrap();
        }
    });

    // Under concurrent clients, routed and not, each answer is its own.
    std::thread::scope(|s| {
        let clients: Vec<_> = (0..4)
            .map(|i| {
                s.spawn(move || {
                    for _ in 0..25 {
                        let (baggage, expected) = match i % 2 {
                            0 => ("devmesh-route=dev-a", a_beta),
                            _ => ("devmesh-route=dev-b", sandbox_beta),
                        };
                        assert_eq!(routed_to("/peer-traced", baggage), expected, "{baggage}");
                    }
                })
            })
            .collect();
        for client in clients {
            client.join().unwrap();
        }
    });

    // Both sides say who serves which route; the inspector says where a
    // request went.
    let ps = text(&sandbox.cli(&["ps"]));
    assert!(
        ps.contains(&format!("beta: requests with route `dev-a` go to http://{ip}:310")),
        "{ps}"
    );
    let ps = text(&a.cli(&["ps"]));
    assert!(ps.contains("beta: this copy serves route `dev-a`"), "{ps}");
    let routes = text(&a.cli(&["routes"]));
    assert!(
        routes.contains(&format!("beta  route `dev-a` → http://{ip}:310")),
        "{routes}"
    );
    let noted = exchanges(&sandbox, 1, |e| {
        e["service"] == "beta"
            && e["note"]
                .as_str()
                .is_some_and(|n| n.starts_with("route `dev-a`: to its copy at"))
            && e["request_headers"].to_string().to_lowercase().contains("userid=7")
    });
    assert_eq!(noted[0]["status"], 200);
    // The team token it was sent with is masked, as secrets are.
    let headers = noted[0]["request_headers"].to_string();
    assert!(
        headers.contains("x-devmesh-access") && !headers.contains(TOKEN),
        "{headers}"
    );

    // A's supervisor killed (its laptop closed): the relay says it is not
    // connected, and at once A's requests go to the sandbox's own, which
    // says so; its route goes within its lease (10 s here).
    let killed = std::time::Instant::now();
    drop(a);
    sandbox.output.wait_for(1, "A's copy not connected", |l| {
        l.contains("beta: the copy for route `dev-a` is not connected to the relay")
    });
    assert_eq!(routed_to("/peer-traced", "devmesh-route=dev-a"), sandbox_beta);
    exchanges(&sandbox, 1, |e| {
        e["note"]
            .as_str()
            .is_some_and(|n| n.contains("is not connected to the relay; the sandbox's own answered"))
    });
    sandbox.output.wait_for(1, "A's route gone", |l| {
        l.contains("beta: the copy for route `dev-a` is gone")
    });
    assert!(killed.elapsed() < Duration::from_secs(30), "{:?}", killed.elapsed());
    assert!(!text(&sandbox.cli(&["ps"])).contains("route `dev-a`"));
}
