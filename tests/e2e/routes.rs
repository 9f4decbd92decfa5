//! One sandbox, many developers: the sandbox's supervisor runs every
//! service, and developer A runs `beta` with `route = true`. A's requests
//! (and anyone's with `baggage: devmesh-route=dev-a`) reach A's `beta`
//! through the relay, in the middle of a chain; every other request the
//! sandbox's own. The relay and etcd run on a sandbox host of their own.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::harness::{Mesh, exchanges, fixture, get, shop_copy, text};
use crate::remote::{Member, Sandbox, add_config, remote_front};
use crate::tunnel::{TOKEN, relay_config, start_relay};

/// A team's sandbox host: the relay and etcd on a network namespace.
struct Team {
    host: Sandbox,
    _relay: Member,
    _etcd: Member,
    etcd: String,
    _relay_dir: tempfile::TempDir,
}

impl Team {
    fn start(dir: &std::path::Path) -> Team {
        let host = Sandbox::on_a_host_of_its_own(dir, "relay host");
        let ip = host.addr.ip();
        let (relay_dir, relay_config) = relay_config(ip, "");
        let relay = start_relay(&host, &relay_config, (ip, 7000).into());
        let (etcd_member, etcd) = host.etcd(relay_dir.path());
        Team {
            host,
            _relay: relay,
            _etcd: etcd_member,
            etcd,
            _relay_dir: relay_dir,
        }
    }

    /// A supervisor's `[tunnel]` (as `namespace`) and `[remote.etcd]`.
    fn config(&self, namespace: &str) -> String {
        let (ip, etcd) = (self.host.addr.ip(), &self.etcd);
        format!(
            "[tunnel]\nrelay = \"{ip}:7000\"\ntoken_file = \"tunnel.token\"\nnamespace = \"{namespace}\"\n\n\
             [remote.etcd]\nendpoints = [\"{etcd}\"]\nnamespace = \"team\"\nlease = \"10s\""
        )
    }
}

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
    let team = Team::start(sandbox_dir.path());
    let shared = |namespace: &str| team.config(namespace);
    let ip = team.host.addr.ip();

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

/// A keep-alive client of the sandbox's gateway at `port`, every request
/// with `baggage` when given, for 20 s and until `done`: the pid of the orders that
/// placed each order, and each failure as the client saw it.
fn shop_client(port: u16, baggage: Option<&str>, elsewhere: &Elsewhere, done: &AtomicBool) -> (Vec<u32>, Vec<String>) {
    // Each runs for 20 s at least.
    let began = Instant::now();
    let (mut placed_by, mut failures) = (Vec::new(), Vec::new());
    let baggage = baggage.map_or(String::new(), |b| format!("baggage: {b}\r\n"));
    let request = format!("GET /checkout/tea?quantity=1 HTTP/1.1\r\nhost: shop\r\n{baggage}\r\n");
    let mut connection: Option<BufReader<TcpStream>> = None;
    while !done.load(Ordering::Relaxed) || began.elapsed() < Duration::from_secs(20) {
        let reader = connection.get_or_insert_with(|| {
            let stream = TcpStream::connect(("127.0.0.1", port)).expect("the gateway's front port accepts");
            stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            BufReader::new(stream)
        });
        match exchange(reader, &request) {
            Ok((200, body)) => {
                let order: serde_json::Value = serde_json::from_str(&body).expect("JSON");
                let pid = order["order"]["placed_by"].as_u64().expect("a pid") as u32;
                if pid != elsewhere.sandbox {
                    elsewhere.count.fetch_add(1, Ordering::Relaxed);
                }
                placed_by.push(pid);
            }
            Ok((status, body)) => failures.push(format!("{:?} {status}: {body}", began.elapsed())),
            Err(e) => {
                failures.push(format!("{:?} the connection: {e}", began.elapsed()));
                connection = None;
            }
        }
    }
    (placed_by, failures)
}

/// Orders placed by another orders than the sandbox's (`sandbox`, a pid).
struct Elsewhere {
    sandbox: u32,
    count: AtomicUsize,
}

impl Elsewhere {
    /// Waits until `more` orders than now were placed elsewhere.
    fn wait_past(&self, more: usize) {
        let target = self.count.load(Ordering::Relaxed) + more;
        let deadline = Instant::now() + crate::harness::DEADLINE;
        while self.count.load(Ordering::Relaxed) < target {
            assert!(Instant::now() < deadline, "no orders reached A's copy");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// One request and its answer (which has a `content-length`) over a kept
/// connection.
fn exchange(reader: &mut BufReader<TcpStream>, request: &str) -> std::io::Result<(u16, String)> {
    reader.get_mut().write_all(request.as_bytes())?;
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status = line.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut length = 0;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// The whole shop: the sandbox runs gateway → orders → payments,
/// developer A runs orders for their route. Four keep-alive clients call
/// the sandbox's gateway for 20 s, two with A's route, one with B's and
/// one with none, while A's supervisor stops, starts again and is killed.
/// B's and unrouted requests never reach A and never fail; A's fail only
/// when inside A's copy as it is killed (a POST that may have been placed
/// is not sent twice): at most one per client.
#[test]
fn developers_coming_and_going_fail_no_one_elses_request() {
    let (sandbox_dir, a_dir) = (shop_copy(), shop_copy());
    let team = Team::start(sandbox_dir.path());
    let shared = |namespace: &str| team.config(namespace);
    std::fs::write(sandbox_dir.path().join("tunnel.token"), TOKEN).unwrap();
    add_config(sandbox_dir.path(), &shared("sandbox"));
    let sandbox = Mesh::start(sandbox_dir, &[], &["payments", "orders", "gateway"]);
    let (gateway, payments) = (sandbox.front("gateway"), sandbox.front("payments"));
    let sandbox_orders = sandbox.pid("orders");

    // Developer A: orders here, for A's requests; payments the sandbox's.
    std::fs::write(a_dir.path().join("tunnel.token"), TOKEN).unwrap();
    let config = a_dir.path().join("devmesh.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("[services.orders]\n", "[services.orders]\nroute = true\n"),
    )
    .unwrap();
    add_config(
        a_dir.path(),
        &format!(
            "{}\n\n[remote.static]\npayments = \"http://127.0.0.1:{payments}\"",
            shared("dev-a")
        ),
    );
    let mut a = Mesh::start(a_dir, &["orders"], &["orders"]);
    let routed = |nth: usize| {
        sandbox.output.wait_for(nth, "the sandbox following A's route", |l| {
            l.contains("orders: requests with route `dev-a` go to its copy at")
        })
    };
    routed(1);

    let done = AtomicBool::new(false);
    let elsewhere = Elsewhere {
        sandbox: sandbox_orders,
        count: AtomicUsize::new(0),
    };
    let clients = [
        Some("devmesh-route=dev-a"),
        Some("userId=7,devmesh-route=dev-a"),
        Some("devmesh-route=dev-b"),
        None,
    ];
    let (results, a_orders) = std::thread::scope(|s| {
        let running: Vec<_> = clients
            .iter()
            .map(|&baggage| {
                let (done, elsewhere) = (&done, &elsewhere);
                s.spawn(move || shop_client(gateway, baggage, elsewhere, done))
            })
            .collect();
        // A's requests reach A's copy, in the middle of the chain.
        let placed_by = || {
            let body = get_with_baggage(gateway, "/checkout/tea", "devmesh-route=dev-a");
            let order: serde_json::Value = serde_json::from_str(&body).expect("JSON");
            order["order"]["placed_by"].as_u64().expect("a pid") as u32
        };
        let mut a_orders = vec![a.pid("orders")];
        assert_eq!(placed_by(), a_orders[0]);
        elsewhere.wait_past(10);
        // A stops (Ctrl-C) and starts again; then A's laptop dies.
        a.signal_and_wait(libc::SIGINT);
        sandbox.output.wait_for(1, "A's route gone", |l| {
            l.contains("orders: the copy for route `dev-a` is gone")
        });
        a.run(&["orders"]);
        a.wait_ready("orders", 2);
        routed(2);
        a_orders.push(a.pid("orders"));
        assert_eq!(placed_by(), a_orders[1]);
        elsewhere.wait_past(10);
        a.signal_and_wait(libc::SIGKILL);
        sandbox.output.wait_for(2, "A's route gone again", |l| {
            l.contains("orders: the copy for route `dev-a` is gone")
        });
        assert_eq!(placed_by(), sandbox_orders);
        done.store(true, Ordering::Relaxed);
        let results: Vec<_> = running.into_iter().map(|c| c.join().unwrap()).collect();
        (results, a_orders)
    });

    for ((placed_by, failures), baggage) in results.iter().zip(clients) {
        let route_a = baggage.is_some_and(|b| b.contains("dev-a"));
        let by_a = placed_by.iter().filter(|pid| a_orders.contains(pid)).count();
        eprintln!(
            "client with baggage {baggage:?}: {} orders, {by_a} placed by A's copy, {} failed {failures:?}",
            placed_by.len(),
            failures.len()
        );
        assert!(placed_by.len() > 20, "{baggage:?}: {} orders", placed_by.len());
        // B's requests and unrouted ones never reach A, and never fail.
        if !route_a {
            assert!(failures.is_empty(), "{baggage:?}: {failures:?}");
            assert!(placed_by.iter().all(|&pid| pid == sandbox_orders), "{baggage:?}");
            continue;
        }
        // A's go to A's copy while it runs, else to the sandbox's; none
        // fails but what was inside A's copy when it was killed: a POST
        // it may have placed, which is not sent twice.
        assert!(
            placed_by
                .iter()
                .all(|pid| *pid == sandbox_orders || a_orders.contains(pid))
        );
        for a_order in &a_orders {
            assert!(placed_by.contains(a_order), "{baggage:?}: none placed by {a_order}");
        }
        assert!(
            placed_by.contains(&sandbox_orders),
            "{baggage:?}: none placed by the sandbox's"
        );
        assert!(failures.len() <= 1, "{baggage:?}: {failures:?}");
    }
}
