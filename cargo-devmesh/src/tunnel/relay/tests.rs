//! The relay in process, with a supervisor of the tunnel client's own
//! code: host routing, TLS, the login page, and what a bad client or a
//! flood meets.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use super::*;
use crate::proxy::testing::front;
use crate::tunnel::client::{self, Expose};
use crate::tunnel::wire::Exposed;

const TOKEN: &str = "alice-0123456789abcdef";

#[test]
fn dial_entries_reach_what_they_name_and_nothing_else() {
    assert!(reaches("127.0.0.1:9000", "127.0.0.1:9000"));
    assert!(!reaches("127.0.0.1:9000", "127.0.0.1:9001"));
    assert!(reaches("payments.svc", "payments.svc:8080"));
    assert!(reaches("10.1.0.0/16", "10.1.200.3:443"));
    assert!(!reaches("10.1.0.0/16", "10.2.0.1:443"));
    assert!(!reaches("10.1.0.0/16", "payments.svc:80"));
    assert!(!reaches("10.1.0.0/16", "nonsense"));
}

#[test]
fn tokens_are_named_lines_of_sixteen_characters_or_more() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens");
    std::fs::write(&path, "# the team\nalice: 0123456789abcdef0123\nbob: short\n").unwrap();
    assert_eq!(
        read_tokens(&path).unwrap(),
        [("alice".to_owned(), "0123456789abcdef0123".to_owned())]
    );
    std::fs::write(&path, "bob: short\n").unwrap();
    assert!(read_tokens(&path).unwrap_err().to_string().contains("16 characters"));
}

/// A CA and a certificate it signed for `*.t.test` and 127.0.0.1.
struct Certs {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn certs() -> Certs {
    let dir = tempfile::tempdir().unwrap();
    let openssl = |args: &[&str]| {
        let output = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir.path())
            .output()
            .expect("openssl runs");
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=relay test CA",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "relay.key",
        "-out",
        "relay.csr",
        "-subj",
        "/CN=relay.test",
    ]);
    std::fs::write(
        dir.path().join("ext.cnf"),
        "subjectAltName=DNS:*.t.test,DNS:relay.test,IP:127.0.0.1\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "relay.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "relay.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    Certs {
        ca: dir.path().join("ca.pem"),
        cert: dir.path().join("relay.pem"),
        key: dir.path().join("relay.key"),
        _dir: dir,
    }
}

/// A relay in process, from a config file ending in `extra`.
struct TestRelay {
    _dir: Arc<tempfile::TempDir>,
    listen: std::net::SocketAddr,
    domain: Option<std::net::SocketAddr>,
    shutdown: CancellationToken,
}

impl Drop for TestRelay {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn relay(extra: &str) -> TestRelay {
    relay_in(Arc::new(tempfile::tempdir().unwrap()), "31000-31999", extra).await
}

/// [`relay`] with its tokens, config and data in `dir`, and public ports
/// `ports`.
async fn relay_in(dir: Arc<tempfile::TempDir>, ports: &str, extra: &str) -> TestRelay {
    std::fs::write(dir.path().join("tokens"), format!("alice: {TOKEN}\n")).unwrap();
    let path = dir.path().join("relay.toml");
    std::fs::write(
        &path,
        format!(
            "listen = \"127.0.0.1:0\"\npublic_host = \"127.0.0.1\"\nports = \"{ports}\"\ntokens = \"{}\"\ndata = \"{}\"\n{extra}",
            dir.path().join("tokens").display(),
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let shutdown = CancellationToken::new();
    let bound = bind(RelayConfig::load(&path).unwrap(), shutdown.clone()).await.unwrap();
    let (listen, domain) = (bound.listen(), bound.domain_listen());
    tokio::spawn(bound.serve());
    TestRelay {
        _dir: dir,
        listen,
        domain,
        shutdown,
    }
}

/// A service that answers each request with the head it received; at
/// `/hold`, it answers a head and holds the connection until the caller
/// leaves.
async fn mirror() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(head) = Head::read(&mut socket).await else {
                    return;
                };
                if head.path == "/hold" {
                    // A stream of events (server-sent events, say), which
                    // ends when writing to its caller fails.
                    let _ = socket
                        .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                        .await;
                    while socket.write_all(b"6\r\nevent\n\r\n").await.is_ok() {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    return;
                }
                let seen = String::from_utf8_lossy(&head.forwarded()).into_owned();
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{seen}",
                    seen.len()
                );
                let _ = socket.write_all(answer.as_bytes()).await;
            });
        }
    });
    addr
}

/// A connection to `public` that holds its place: its answer has begun.
async fn held(public: std::net::SocketAddr) -> TcpStream {
    let mut socket = TcpStream::connect(public).await.unwrap();
    socket
        .write_all(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 12];
    socket.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200", "a held connection was let in");
    socket
}

/// A supervisor exposing `services` (name, public) through the front port
/// `front`, with the tunnel client's own code; the public URLs.
async fn supervisor(
    relay: &TestRelay,
    tls: Option<&tokio_rustls::TlsConnector>,
    services: &[(&str, bool)],
    front: &crate::proxy::Door,
) -> Vec<(String, String)> {
    let hello = Hello {
        version: VERSION,
        token: TOKEN.to_owned(),
        namespace: "alice".to_owned(),
        services: services
            .iter()
            .map(|&(name, public)| Exposed {
                name: name.to_owned(),
                public,
            })
            .collect(),
    };
    let client::Connected { link, opened, urls } =
        client::connect(&relay.listen.to_string(), tls, &hello).await.unwrap();
    let exposed: BTreeMap<String, Expose> = services
        .iter()
        .map(|&(name, public)| {
            let door = front.clone();
            (name.to_owned(), Expose { door, public })
        })
        .collect();
    tokio::spawn(async move { client::serve(&link, opened, &exposed).await });
    urls
}

/// Sends `request` to `addr` (over TLS for `host` with `tls`) and reads
/// the whole answer.
async fn call(addr: std::net::SocketAddr, tls: Option<(&tokio_rustls::TlsConnector, &str)>, request: &str) -> String {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut socket: Box<dyn Socket> = match tls {
        Some((tls, host)) => {
            let name = tokio_rustls::rustls::pki_types::ServerName::try_from(host.to_owned()).unwrap();
            Box::new(tls.connect(name, tcp).await.unwrap())
        }
        None => Box::new(tcp),
    };
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = socket.read_to_end(&mut answer).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_by_host_over_tls_are_private_until_a_token_or_a_login() {
    let certs = certs();
    let relay = relay(&format!(
        "[domain]\nname = \"t.test\"\nlisten = \"127.0.0.1:0\"\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        certs.cert.display(),
        certs.key.display()
    ))
    .await;
    let tls = crate::proxy::tls::connector(Some(&certs.ca), "the test CA").unwrap();
    let urls = supervisor(&relay, Some(&tls), &[("beta", false)], &front(mirror().await).door).await;
    let domain = relay.domain.unwrap();
    assert_eq!(
        urls,
        [(
            "beta".to_owned(),
            format!("https://beta--alice.t.test:{}", domain.port())
        )]
    );
    let host = "beta--alice.t.test";
    let get =
        |path: &str, headers: &str| format!("GET {path} HTTP/1.1\r\nHost: {host}:{}\r\n{headers}\r\n", domain.port());
    let over_tls = Some((&tls, host));

    let refused = call(domain, over_tls, &get("/orders", "")).await;
    assert!(
        refused.starts_with("HTTP/1.1 401") && refused.contains("log in at /.devmesh/login"),
        "{refused}"
    );
    let browser = call(domain, over_tls, &get("/orders?id=1", "Accept: text/html\r\n")).await;
    assert!(
        browser.starts_with("HTTP/1.1 303") && browser.contains("location: /.devmesh/login?next=/orders%3Fid%3D1"),
        "{browser}"
    );
    let page = call(domain, over_tls, &get("/.devmesh/login?next=/orders", "")).await;
    assert!(
        page.starts_with("HTTP/1.1 200") && page.contains("<form method=post"),
        "{page}"
    );

    let login = |token: &str| {
        let body = format!("token={token}&next=%2Forders");
        format!(
            "POST /.devmesh/login HTTP/1.1\r\nHost: {host}\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let wrong = call(domain, over_tls, &login("not-a-team-token")).await;
    assert!(
        wrong.starts_with("HTTP/1.1 401") && wrong.contains("not a team token"),
        "{wrong}"
    );
    let logged_in = call(domain, over_tls, &login(TOKEN)).await;
    assert!(
        logged_in.starts_with("HTTP/1.1 303") && logged_in.contains("location: /orders\r\n"),
        "{logged_in}"
    );
    assert!(logged_in.contains("; Domain=t.test; Secure"), "{logged_in}");
    let session = logged_in
        .split("devmesh-access=")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .unwrap()
        .to_owned();
    assert!(
        !logged_in.contains(TOKEN),
        "the cookie holds a session, never the token"
    );

    // With the cookie, or the header: through, and the service sees neither.
    let through = call(
        domain,
        over_tls,
        &get("/orders", &format!("Cookie: theme=dark; devmesh-access={session}\r\n")),
    )
    .await;
    assert!(
        through.starts_with("HTTP/1.1 200") && through.contains("GET /orders HTTP/1.1"),
        "{through}"
    );
    assert!(
        through.contains("Cookie: theme=dark\r\n") && !through.contains(&session),
        "{through}"
    );
    let through = call(
        domain,
        over_tls,
        &get("/orders", &format!("x-devmesh-access: {TOKEN}\r\n")),
    )
    .await;
    assert!(
        through.starts_with("HTTP/1.1 200") && !through.contains(TOKEN),
        "{through}"
    );
    let forged = call(domain, over_tls, &get("/orders", "Cookie: devmesh-access=0000\r\n")).await;
    assert!(forged.starts_with("HTTP/1.1 401"), "{forged}");

    // A host the relay has no tunnel at: said to the team; a stranger is
    // refused as at a private tunnel, and learns nothing of which exist.
    let nobody = |headers: &str| format!("GET / HTTP/1.1\r\nHost: nobody--alice.t.test\r\n{headers}\r\n");
    let elsewhere = call(
        domain,
        Some((&tls, "nobody--alice.t.test")),
        &nobody(&format!("x-devmesh-access: {TOKEN}\r\n")),
    )
    .await;
    assert!(
        elsewhere.starts_with("HTTP/1.1 404") && elsewhere.contains("no tunnel at `nobody--alice.t.test`"),
        "{elsewhere}"
    );
    let stranger = call(domain, Some((&tls, "nobody--alice.t.test")), &nobody("")).await;
    assert!(
        stranger.starts_with("HTTP/1.1 401") && !stranger.contains("no tunnel"),
        "{stranger}"
    );

    // A supervisor that does not speak TLS to it is not let in.
    let hello = Hello {
        version: VERSION,
        token: TOKEN.to_owned(),
        namespace: "alice".to_owned(),
        services: Vec::new(),
    };
    assert!(client::connect(&relay.listen.to_string(), None, &hello).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_clients_and_floods_are_refused_and_the_relay_serves_on() {
    let relay = relay("[limits]\nconnections = 2\nhandshake = \"300ms\"\n").await;
    let urls = supervisor(&relay, None, &[("hook", true)], &front(mirror().await).door).await;
    let port: u16 = urls[0].1.rsplit(':').next().unwrap().parse().unwrap();
    let public = std::net::SocketAddr::from(([127, 0, 0, 1], port));

    // Two connections held open (a public tunnel takes any TCP): the
    // third is refused in words; one closed makes room again.
    let first = held(public).await;
    let _second = held(public).await;
    let third = call(public, None, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(
        third.starts_with("HTTP/1.1 503") && third.contains("hold 2 connections already, the limit"),
        "{third}"
    );
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !call(public, None, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .starts_with("HTTP/1.1 200")
    {
        assert!(
            Instant::now() < deadline,
            "the room of a closed connection was never given back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Bad supervisors: silent, garbage, an oversized frame; each closed.
    let closed = |bytes: &'static [u8]| async move {
        let mut socket = TcpStream::connect(relay.listen).await.unwrap();
        socket.write_all(bytes).await.unwrap();
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), socket.read_to_end(&mut rest)).await;
        assert!(matches!(read, Ok(Ok(_)) | Ok(Err(_))), "{bytes:?}: never closed");
    };
    closed(b"").await;
    closed(b"GET / HTTP/1.1\r\n\r\n").await;
    closed(&[4, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff]).await;

    // A wrong token and another protocol version: refused, and told why.
    let mut hello = Hello {
        version: VERSION,
        token: "a-wrong-token-of-length".to_owned(),
        namespace: "alice".to_owned(),
        services: Vec::new(),
    };
    let refused = client::connect(&relay.listen.to_string(), None, &hello)
        .await
        .err()
        .unwrap();
    assert!(refused.contains("refused: unknown token"), "{refused}");
    hello.version = VERSION + 1;
    let refused = client::connect(&relay.listen.to_string(), None, &hello)
        .await
        .err()
        .unwrap();
    assert!(refused.contains("protocol version"), "{refused}");

    // A flood of silent connections: past the room for them, new ones are
    // closed at once; the relay serves on.
    let mut flood = Vec::new();
    for _ in 0..MAX_PENDING + 50 {
        flood.push(TcpStream::connect(relay.listen).await.unwrap());
    }
    drop(flood);
    assert!(
        call(public, None, "GET /still HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .contains("GET /still")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_moved_to_a_domain_and_back_keeps_each_tunnels_port() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let service = front(mirror().await);
    // A range of its own (one port the kernel had free): the other tests
    // of the process take theirs from 31000 on.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let range = format!("{free}-{free}");
    let ports = relay_in(Arc::clone(&dir), &range, "").await;
    let before = supervisor(&ports, None, &[("beta", false)], &service.door).await;
    drop(ports);
    let domain = relay_in(
        Arc::clone(&dir),
        &range,
        "[domain]\nname = \"t.test\"\nlisten = \"127.0.0.1:0\"\n",
    )
    .await;
    let hosted = supervisor(&domain, None, &[("beta", false)], &service.door).await;
    assert!(hosted[0].1.starts_with("http://beta--alice.t.test:"), "{hosted:?}");
    drop(domain);
    // The first relay's port, free again once it has stopped.
    let port: u16 = before[0].1.rsplit(':').next().unwrap().parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the first relay never let its port go");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let again = relay_in(Arc::clone(&dir), &range, "").await;
    let after = supervisor(&again, None, &[("beta", false)], &service.door).await;
    assert_eq!(after, before, "the same port as before the domain");
}

/// A caller with a copy of its own to go to (a sandbox's front port) is
/// told at once, in a header, that a tunnel's supervisor is not connected,
/// rather than waiting for it to come back; its body is read, so the
/// answer is not lost to a reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_with_a_fallback_is_told_at_once_that_a_supervisor_is_gone() {
    let relay = relay("").await;
    let hello = Hello {
        version: VERSION,
        token: TOKEN.to_owned(),
        namespace: "alice".to_owned(),
        services: vec![Exposed {
            name: "hook".to_owned(),
            public: false,
        }],
    };
    let client::Connected { link, opened, urls } =
        client::connect(&relay.listen.to_string(), None, &hello).await.unwrap();
    let link = Arc::new(link);
    let hook = front(mirror().await);
    let exposed = BTreeMap::from([(
        "hook".to_owned(),
        Expose {
            door: hook.door.clone(),
            public: false,
        },
    )]);
    let serving = Arc::clone(&link);
    tokio::spawn(async move { client::serve(&serving, opened, &exposed).await });
    let port: u16 = urls[0].1.rsplit(':').next().unwrap().parse().unwrap();
    let public = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let request = format!(
        "POST /orders HTTP/1.1\r\nHost: x\r\n{}: {TOKEN}\r\n{}: own\r\ncontent-length: 7\r\n\r\norder 7",
        callers::ACCESS_HEADER,
        callers::FALLBACK_HEADER
    );
    let answered = call(public, None, &request).await;
    assert!(
        answered.starts_with("HTTP/1.1 200") && answered.ends_with("order 7"),
        "{answered}"
    );
    // Handed to the front port in this process, which captured it as the
    // tunnel's, body and all.
    let deadline = Instant::now() + Duration::from_secs(10);
    let captured = loop {
        let captured = hook.inspector.store.list(&crate::inspector::Filter::default());
        if captured.iter().any(|e| e.complete) || Instant::now() > deadline {
            break captured;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let [carried] = captured.as_slice() else {
        panic!("one call captured: {captured:?}")
    };
    assert_eq!(
        (
            &*carried.caller,
            carried.method.as_str(),
            carried.path.as_str(),
            carried.status
        ),
        (crate::inspector::TUNNEL, "POST", "/orders", Some(200))
    );
    assert_eq!(carried.request_body.text.as_deref(), Some("order 7"));

    link.close();
    let deadline = Instant::now() + Duration::from_secs(10);
    let gone = loop {
        let answered = call(public, None, &request).await;
        if answered.starts_with("HTTP/1.1 503") {
            break answered;
        }
        assert!(
            Instant::now() < deadline,
            "the closed link was never noticed: {answered}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(
        gone.contains(&format!("{}: hook\r\n", callers::NOT_CONNECTED_HEADER)),
        "{gone}"
    );
    assert!(!gone.contains("waited"), "{gone}");
}
