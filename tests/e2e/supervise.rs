//! `cargo devmesh run`: services find each other, keep their ports, survive
//! crashes and restarts, and die with the supervisor.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::harness::{DEADLINE, Mesh, fixture, get, read_json, text, wait_exit};

fn mesh() -> Mesh {
    Mesh::start(fixture("mesh"), &[], &["beta", "alpha"])
}

#[test]
fn services_find_each_other_through_their_front_ports() {
    let mesh = mesh();
    let (status, body) = get(mesh.front("alpha"), "/peer");
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("alpha got: beta "), "{body}");
    let registry = read_json(&mesh.state().join("registry.json"));
    let beta = &registry["services"]["beta"];
    assert_eq!(beta["url"], format!("http://127.0.0.1:{}", mesh.front("beta")));
    assert_eq!(beta["status"], "ready");
}

#[test]
fn ports_survive_a_restart_and_a_whole_rerun() {
    let mut mesh = mesh();
    let (alpha, beta) = (mesh.front("alpha"), mesh.front("beta"));
    let old_pid = mesh.pid("beta");
    let inspector = read_json(&mesh.state().join("control.json"))["addr"].clone();

    let output = mesh.cli(&["restart", "beta"]);
    assert!(output.status.success(), "{}", text(&output));
    assert_ne!(mesh.pid("beta"), old_pid);
    assert_eq!(mesh.front("beta"), beta);
    assert_eq!(get(beta, "/whoami").0, 200);

    let status = mesh.signal_and_wait(libc::SIGINT);
    assert!(status.success(), "{status}");
    let registry = read_json(&mesh.state().join("registry.json"));
    assert_eq!(
        registry["services"],
        serde_json::json!({}),
        "entries are cleared on exit"
    );

    mesh.run(&[]);
    mesh.wait_ready("alpha", 2);
    assert_eq!((mesh.front("alpha"), mesh.front("beta")), (alpha, beta));
    assert_eq!(get(alpha, "/peer").0, 200);
    let control = read_json(&mesh.state().join("control.json"));
    assert_eq!(control["addr"], inspector, "the inspector keeps its address");

    // `logs` shows this run; `-n` reaches back into earlier ones.
    let serving = |args: &[&str]| text(&mesh.cli(args)).matches("beta serving").count();
    assert_eq!(serving(&["logs", "beta"]), 1);
    assert_eq!(serving(&["logs", "-n", "1000", "beta"]), 3, "two runs and a restart");
}

#[test]
fn a_crashed_service_comes_back_while_its_neighbour_serves() {
    let mesh = mesh();
    let (alpha, beta) = (mesh.front("alpha"), mesh.front("beta"));
    get(alpha, "/crash");
    mesh.output.wait_for(1, "the crash report", |l| {
        l.contains("alpha: exited (exit status 3); restarting in")
    });
    assert_eq!(get(beta, "/whoami").0, 200);
    mesh.wait_ready("alpha", 2);
    assert_eq!(get(alpha, "/peer").0, 200);
    let ps = text(&mesh.cli(&["ps"]));
    let alpha_row = ps.lines().find(|l| l.starts_with("alpha")).unwrap_or_default();
    assert!(alpha_row.contains("ready"), "{ps}");
    let counts: Vec<_> = alpha_row.split_whitespace().skip(4).take(2).collect();
    assert_eq!(counts, ["0", "1"], "no restart asked for, one crash: {ps}");
}

#[test]
fn a_restart_fails_no_request() {
    let mesh = mesh();
    let first_pid = mesh.pid("beta");
    gets_fail_none(mesh.front("beta"), 1, || {
        for _ in 0..3 {
            let output = mesh.cli(&["restart", "--no-build", "beta"]);
            assert!(output.status.success(), "{}", text(&output));
        }
    });
    assert_ne!(mesh.pid("beta"), first_pid);
}

/// `GET /whoami` on `port` from `clients` threads for as long as `during`
/// runs, and a few after; asserts that some were sent and none failed.
fn gets_fail_none(port: u16, clients: usize, during: impl FnOnce()) {
    requests_fail_none(clients, || move || get(port, "/whoami"), during);
}

/// [`gets_fail_none`] over HTTP/2, as a gRPC client sends: each client has
/// one connection, kept, its requests streams of it.
fn http2_gets_fail_none(port: u16, clients: usize, during: impl FnOnce()) {
    let client = || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http::<http_body_util::Empty<hyper::body::Bytes>>();
        move || {
            runtime.block_on(async {
                let request = hyper::Request::get(format!("http://127.0.0.1:{port}/whoami"))
                    .body(http_body_util::Empty::new())
                    .unwrap();
                match client.request(request).await {
                    Ok(response) => {
                        use http_body_util::BodyExt;
                        let status = response.status().as_u16();
                        let body = response.into_body().collect().await.map(|b| b.to_bytes());
                        (
                            status,
                            body.map_or_else(|e| e.to_string(), |b| String::from_utf8_lossy(&b).into_owned()),
                        )
                    }
                    Err(e) => (0, e.to_string()),
                }
            })
        }
    };
    requests_fail_none(clients, client, during);
}

/// Requests from `clients` threads, each sending with what `client` makes,
/// for as long as `during` runs, and a few after; asserts that some were
/// sent and none failed.
fn requests_fail_none<S>(clients: usize, client: impl Fn() -> S + Sync, during: impl FnOnce())
where
    S: FnMut() -> (u16, String),
{
    let (done, sent, failed) = (AtomicBool::new(false), AtomicUsize::new(0), AtomicUsize::new(0));
    std::thread::scope(|s| {
        for _ in 0..clients {
            s.spawn(|| {
                let mut send = client();
                while !done.load(Ordering::SeqCst) {
                    let (status, body) = send();
                    sent.fetch_add(1, Ordering::SeqCst);
                    if status != 200 {
                        eprintln!("failed: {status} {body}");
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
        }
        during();
        let after = sent.load(Ordering::SeqCst);
        while sent.load(Ordering::SeqCst) < after + 10 {
            std::thread::yield_now();
        }
        done.store(true, Ordering::SeqCst);
    });
    let (sent, failed) = (sent.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
    assert!(sent > 0);
    assert_eq!(failed, 0, "of {sent} requests");
}

/// GETs to a front port from some clients while something happens.
type Load = fn(u16, usize, &mut dyn FnMut());

/// A crash is waited through as a restart is: GETs sent while the
/// instance is dead, and while the supervisor starts the next, wait for
/// it; over HTTP/1, then over HTTP/2.
#[test]
fn a_crash_fails_no_get() {
    let mesh = mesh();
    let loads: [Load; 2] = [
        |port, clients, during| gets_fail_none(port, clients, during),
        |port, clients, during| http2_gets_fail_none(port, clients, during),
    ];
    for (crash, load) in loads.into_iter().enumerate() {
        let crashed = mesh.pid("beta");
        load(mesh.front("beta"), 2, &mut || {
            // SAFETY: a signal to a service process of this test's mesh.
            unsafe { libc::kill(crashed as i32, libc::SIGKILL) };
            mesh.output.wait_for(crash + 1, "the crash report", |l| {
                l.contains("beta: exited") && l.contains("restarting in")
            });
            mesh.wait_ready("beta", crash + 2);
        });
        assert_ne!(mesh.pid("beta"), crashed);
    }
}

#[test]
fn a_request_to_a_stopped_service_waits_for_its_start() {
    let mesh = mesh();
    let beta = mesh.front("beta");
    let output = mesh.cli(&["stop", "beta"]);
    assert!(output.status.success(), "{}", text(&output));
    assert!(text(&mesh.cli(&["ps"])).contains("stopped"));
    std::thread::scope(|s| {
        let waiting = s.spawn(|| get(beta, "/whoami"));
        let output = mesh.cli(&["start", "beta"]);
        assert!(output.status.success(), "{}", text(&output));
        let (status, body) = waiting.join().unwrap();
        assert_eq!(status, 200, "{body}");
    });
}

/// A closed terminal sends SIGHUP: a clean stop, under load, that leaves
/// no registry entry under a dead pid, no `control.json`, no process.
#[test]
fn sighup_stops_the_mesh_cleanly() {
    let mut mesh = mesh();
    let beta = mesh.front("beta");
    let pids = [mesh.pid("alpha"), mesh.pid("beta")];
    let done = AtomicBool::new(false);
    let status = std::thread::scope(|s| {
        s.spawn(|| {
            // Calls that fail once the front port closes are expected.
            while !done.load(Ordering::SeqCst) {
                if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", beta)) {
                    use std::io::{Read, Write};
                    let _ = stream.write_all(b"GET /whoami HTTP/1.1\r\nhost: beta\r\nconnection: close\r\n\r\n");
                    let _ = stream.read_to_end(&mut Vec::new());
                }
            }
        });
        let status = mesh.signal_and_wait(libc::SIGHUP);
        done.store(true, Ordering::SeqCst);
        status
    });
    assert!(status.success(), "{status}");
    mesh.output
        .wait_for(1, "the stop", |l| l.ends_with("devmesh | stopped"));
    let registry = read_json(&mesh.state().join("registry.json"));
    assert_eq!(registry["services"], serde_json::json!({}), "{registry}");
    assert!(registry["supervisor_pid"].is_null(), "{registry}");
    assert!(!mesh.state().join("control.json").exists());
    for pid in pids {
        assert!(
            wait_exit(pid, DEADLINE),
            "service process {pid} outlived the supervisor"
        );
    }
}

#[test]
fn sigkill_of_the_supervisor_leaves_no_service_running() {
    let mut mesh = mesh();
    let pids = [mesh.pid("alpha"), mesh.pid("beta")];
    mesh.signal_and_wait(libc::SIGKILL);
    for pid in pids {
        assert!(
            wait_exit(pid, DEADLINE),
            "service process {pid} outlived the supervisor"
        );
    }
}

#[test]
fn logs_show_one_service_or_all() {
    let mesh = mesh();
    let output = mesh.cli(&["logs", "beta"]);
    assert!(output.status.success(), "{}", text(&output));
    let lines = String::from_utf8(output.stdout).unwrap();
    assert!(lines.contains("beta | beta serving"), "{lines}");
    assert!(lines.lines().all(|l| l.starts_with("beta | ")), "{lines}");

    let all = String::from_utf8(mesh.cli(&["logs"]).stdout).unwrap();
    assert!(
        all.contains("alpha | alpha serving") && all.contains(" beta | beta serving"),
        "{all}"
    );

    let message = mesh.fails(&["logs", "gama"], 2);
    assert!(message.contains("unknown service `gama`"), "{message}");
}

#[test]
fn watch_restarts_exactly_the_dependents_of_a_changed_crate() {
    let mesh = Mesh::start_alone(fixture("mesh"), &["--watch"], &["beta", "alpha"]);
    mesh.output
        .wait_for(1, "the watch to start", |l| l.contains("watching for changes"));
    let alpha_pid = mesh.pid("alpha");
    let library = mesh.root.join("greeting/src/lib.rs");
    let code = std::fs::read_to_string(&library).unwrap().replace("hello", "bonjour");
    std::fs::write(&library, code).unwrap();

    mesh.wait_ready("beta", 2);
    let (status, body) = get(mesh.front("beta"), "/whoami");
    assert_eq!(status, 200);
    assert!(body.ends_with("bonjour"), "{body}");
    assert_eq!(mesh.pid("alpha"), alpha_pid, "alpha does not depend on greeting");
    let rebuilt = mesh
        .output
        .wait_for(1, "the rebuild note", |l| l.contains("changed: rebuilding"));
    assert!(rebuilt.ends_with("changed: rebuilding beta"), "{rebuilt}");
}

#[test]
fn a_command_service_runs_in_its_folder_on_its_front_port() {
    let mesh = Mesh::start(fixture("mesh"), &["files"], &["files"]);
    let (status, body) = get(mesh.front("files"), "/src/lib.rs");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("pub fn greeting()"), "{body}");
}

#[test]
fn a_failed_build_leaves_the_others_running_until_fixed() {
    let dir = fixture("mesh");
    std::fs::write(dir.path().join("devmesh.toml"), "").unwrap();
    let library = dir.path().join("greeting/src/lib.rs");
    let good = std::fs::read_to_string(&library).unwrap();
    std::fs::write(&library, good.replace("\"hello\"", "42")).unwrap();

    let mesh = Mesh::start_alone(dir, &["alpha", "beta"], &["alpha"]);
    assert_eq!(get(mesh.front("alpha"), "/whoami").0, 200);
    let ps = text(&mesh.cli(&["ps"]));
    let beta = ps.lines().find(|l| l.starts_with("beta")).unwrap_or_default();
    assert!(beta.contains("build failed"), "{ps}");

    let output = mesh.cli(&["restart", "beta"]);
    assert!(!output.status.success(), "a broken build cannot restart");
    assert!(text(&output).contains("the build failed"), "{}", text(&output));

    std::fs::write(&library, good).unwrap();
    let output = mesh.cli(&["restart", "beta"]);
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(get(mesh.front("beta"), "/whoami").0, 200);
}

#[test]
fn logs_follow_shows_new_lines_as_they_come() {
    let mesh = mesh();
    let lines = std::sync::Arc::new(crate::harness::Lines::default());
    let mut follow = mesh
        .command()
        .args(["logs", "-f", "--since", "1h", "beta"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("logs -f starts");
    lines.collect(follow.stdout.take().unwrap());
    lines.wait_for(1, "the first start of beta", |l| l.starts_with("beta | beta serving"));
    let output = mesh.cli(&["restart", "--no-build", "beta"]);
    assert!(output.status.success(), "{}", text(&output));
    lines.wait_for(2, "beta's second start, followed", |l| {
        l.starts_with("beta | beta serving")
    });
    let _ = follow.kill();
    let _ = follow.wait();

    let message = mesh.fails(&["logs", "--since", "soon"], 2);
    assert!(message.contains("`soon` is not a duration"), "{message}");
}

#[test]
fn a_second_supervisor_for_the_same_workspace_is_refused() {
    let mesh = mesh();
    let message = mesh.fails(&["run"], 1);
    assert!(
        message.contains("a supervisor is already running for this workspace"),
        "{message}"
    );
    assert_eq!(get(mesh.front("beta"), "/whoami").0, 200, "the first one goes on");
}

#[test]
fn a_request_that_waits_too_long_gets_a_503_that_says_why() {
    let dir = fixture("mesh");
    let config = dir.path().join("devmesh.toml");
    let text_of_config = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text_of_config.replace("ready_timeout = \"20s\"", "ready_timeout = \"200ms\""),
    )
    .unwrap();
    let mesh = Mesh::start(dir, &[], &["beta", "alpha"]);
    let output = mesh.cli(&["stop", "beta"]);
    assert!(output.status.success(), "{}", text(&output));
    let (status, body) = get(mesh.front("beta"), "/whoami");
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("service `beta` is not ready (stopped) after 200ms"),
        "{body}"
    );
    assert!(body.contains("it was stopped: `cargo devmesh start beta`"), "{body}");
    let ps = text(&mesh.cli(&["ps"]));
    let beta = ps.lines().find(|l| l.starts_with("beta")).unwrap_or_default();
    assert_eq!(
        beta.split_whitespace().nth(3),
        Some("-"),
        "a stopped service has no pid: {ps}"
    );
}

/// A command service gets the root's `.env` and its own `env_file`, and
/// `--watch` restarts it when a file in its folder changes.
#[test]
fn a_command_gets_its_env_files_and_is_restarted_by_watch() {
    let dir = fixture("mesh");
    std::fs::create_dir(dir.path().join("site")).unwrap();
    std::fs::write(dir.path().join("site/index.html"), "first").unwrap();
    std::fs::write(
        dir.path().join(".env"),
        "# shared\nFROM_ROOT=root-value\nOVERRIDDEN=root\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("site.env"), "export OVERRIDDEN='from env_file'\n").unwrap();
    std::fs::write(
        dir.path().join("devmesh.toml"),
        "[services.site]\ncommand = \"echo env: $FROM_ROOT, $OVERRIDDEN; exec python3 -m http.server $PORT --bind 127.0.0.1\"\n\
         cwd = \"site\"\nenv_file = \"site.env\"\n",
    )
    .unwrap();
    let mesh = Mesh::start(dir, &["site", "--watch"], &["site"]);
    mesh.output
        .wait_for(1, "the environment", |l| l.contains("env: root-value, from env_file"));
    edited_and_restarted(&mesh, "site", ("site/index.html", "/index.html"), "second");
}

/// Under `--watch`, writes `text` to `file` (in the workspace) and waits
/// for `service` to be restarted for it; the new instance serves the file
/// at `served_at`.
fn edited_and_restarted(mesh: &Mesh, service: &str, (file, served_at): (&str, &str), text: &str) {
    mesh.output
        .wait_for(1, "the watch to start", |l| l.contains("watching for changes"));
    let first = mesh.pid(service);
    std::fs::write(mesh.root.join(file), text).unwrap();
    mesh.output.wait_for(1, "the restart note", |l| {
        l.ends_with(&format!("changed: restarting {service}"))
    });
    mesh.wait_ready(service, 2);
    assert_ne!(mesh.pid(service), first);
    assert_eq!(get(mesh.front(service), served_at).1, text);
}

/// A command with no `cwd`, as Procfiles are written (`exec python3 …`,
/// run from the root): `--watch` restarts it for a file beside it. (That a
/// Rust package's files do not is `watch`'s unit test.)
#[test]
fn watch_restarts_a_command_without_a_cwd_for_its_files() {
    let dir = fixture("mesh");
    std::fs::create_dir(dir.path().join("tools")).unwrap();
    std::fs::write(dir.path().join("tools/app.py"), "print('first')\n").unwrap();
    std::fs::write(
        dir.path().join("devmesh.toml"),
        "[services.script]\ncommand = \"exec python3 -m http.server $PORT --bind 127.0.0.1\"\n",
    )
    .unwrap();
    let mesh = Mesh::start(dir, &["script", "--watch"], &["script"]);
    edited_and_restarted(&mesh, "script", ("tools/app.py", "/tools/app.py"), "print('second')\n");
}

/// Two workspaces in one port range: the second is never handed a port
/// kept for the first, even while the first is stopped, and the first gets
/// its own back.
#[test]
fn two_workspaces_never_share_a_port_across_stop_and_start() {
    // Beyond the ranges the harness deals out to other meshes; room for
    // both (each takes six: three services, the inspector, DNS and OTLP).
    let range = [("DEVMESH_RUN__PORTS", "29500-29519")];
    let mut first = Mesh::start_with_env(fixture("mesh"), &[], &range, &["beta", "alpha"]);
    let ports = |mesh: &Mesh| read_json(&mesh.state().join("ports.json"));
    let kept = ports(&first);
    first.signal_and_wait(libc::SIGINT);

    let second = Mesh::start_with_env(fixture("mesh"), &[], &range, &["beta", "alpha"]);
    let theirs: Vec<_> = ports(&second).as_object().unwrap().values().cloned().collect();
    for port in kept.as_object().unwrap().values() {
        assert!(
            !theirs.contains(port),
            "port {port} of the first workspace was handed to the second"
        );
    }
    first.run(&[]);
    first.wait_ready("alpha", 2);
    assert_eq!(ports(&first), kept);
    assert_eq!(get(first.front("alpha"), "/peer").0, 200);
}

/// A WebSocket to an instance a restart replaced stays open on it until
/// its client closes it, close handshake and all; `restart --now` cuts it
/// after the grace period, and its capture says so.
#[test]
fn a_websocket_outlives_a_restart_unless_told_now() {
    let mesh = mesh();
    let alpha = mesh.front("alpha");
    let old = mesh.pid("alpha");
    let mut socket = WebSocket::open(alpha);
    assert_eq!(socket.echoed("one"), "one");
    let output = mesh.cli(&["restart", "alpha"]);
    assert!(output.status.success(), "{}", text(&output));
    assert_ne!(mesh.pid("alpha"), old);
    assert_eq!(socket.echoed("two"), "two", "the old instance still serves it");
    let ps = text(&mesh.cli(&["ps"]));
    assert!(
        ps.lines()
            .any(|l| l.starts_with("alpha") && l.contains("draining (1 open)")),
        "{ps}"
    );
    socket.close();
    assert!(
        wait_exit(old, DEADLINE),
        "the old instance goes once its connection ends"
    );
    let closed = crate::harness::exchanges(&mesh, 1, |e| e["path"] == "/ws" && e["complete"] == true);
    assert_eq!(
        (&closed[0]["kind"], &closed[0]["error"]),
        (&"websocket".into(), &serde_json::Value::Null)
    );

    let mut socket = WebSocket::open(alpha);
    assert_eq!(socket.echoed("three"), "three");
    let output = mesh.cli(&["restart", "--now", "alpha"]);
    assert!(output.status.success(), "{}", text(&output));
    // The old instance is stopped after the grace period: the connection
    // ends with no close frame, and the client closes its side.
    let mut rest = Vec::new();
    let _ = std::io::Read::read_to_end(&mut socket.0, &mut rest);
    drop(socket);
    let cut = crate::harness::exchanges(&mesh, 1, |e| {
        e["path"] == "/ws" && e["error"].as_str().is_some_and(|e| e.starts_with("cut"))
    });
    assert_eq!(cut[0]["kind"], "websocket");
}

/// `traffic -f` shows each exchange as it ends: a WebSocket open the
/// whole time holds back none of the calls after it, and shows once it
/// ends. (It held every later one back: a soak's follower stalled.)
#[test]
fn traffic_follow_is_not_held_back_by_a_websocket_left_open() {
    let mesh = mesh();
    let alpha = mesh.front("alpha");
    let mut socket = WebSocket::open(alpha);
    assert_eq!(socket.echoed("one"), "one");
    let lines = std::sync::Arc::new(crate::harness::Lines::default());
    let mut follow = mesh
        .command()
        .args(["traffic", "-f"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("traffic -f starts");
    lines.collect(follow.stdout.take().unwrap());
    for i in 0..3 {
        assert_eq!(get(alpha, &format!("/whoami?after-the-socket-{i}")).0, 200);
        lines.wait_for(1, "a call after the open WebSocket", |l| {
            l.contains(&format!("/whoami?after-the-socket-{i}"))
        });
    }
    assert_eq!(lines.count(|l| l.contains("GET /ws")), 0, "shown only once it ends");
    socket.close();
    lines.wait_for(1, "the WebSocket, once it ended", |l| l.contains("GET /ws"));
    assert_eq!(get(alpha, "/whoami?after-it-closed").0, 200);
    lines.wait_for(1, "a call after it closed", |l| l.contains("/whoami?after-it-closed"));
    let _ = follow.kill();
    let _ = follow.wait();
    assert_eq!(lines.count(|l| l.contains("GET /ws")), 1, "shown once");
}

/// A WebSocket client, as RFC 6455 has it: a checked handshake, masked
/// frames, and the close handshake.
struct WebSocket(std::net::TcpStream);

impl WebSocket {
    fn open(port: u16) -> WebSocket {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        // The RFC's example key, and the accept key it gives.
        write!(
            stream,
            "GET /ws HTTP/1.1\r\nhost: x\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\
             sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        .unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            stream.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head);
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(
            head.contains("sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            "{head}"
        );
        WebSocket(stream)
    }

    fn send(&mut self, opcode: u8, payload: &[u8]) {
        use std::io::Write;
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut frame = vec![0x80 | opcode, 0x80 | payload.len() as u8];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.0.write_all(&frame).unwrap();
    }

    /// A server's frame (unmasked, short): its opcode and payload.
    fn receive(&mut self) -> (u8, Vec<u8>) {
        use std::io::Read;
        let mut head = [0u8; 2];
        self.0.read_exact(&mut head).unwrap();
        let mut payload = vec![0u8; usize::from(head[1] & 0x7f)];
        self.0.read_exact(&mut payload).unwrap();
        (head[0] & 0x0f, payload)
    }

    fn echoed(&mut self, text: &str) -> String {
        self.send(0x1, text.as_bytes());
        let (opcode, payload) = self.receive();
        assert_eq!(opcode, 0x1, "a text frame comes back");
        String::from_utf8(payload).unwrap()
    }

    /// Sends a close frame (1000, normal), waits for the server's, then
    /// for the connection to end.
    fn close(mut self) {
        use std::io::Read;
        self.send(0x8, &1000u16.to_be_bytes());
        assert_eq!(self.receive(), (0x8, 1000u16.to_be_bytes().to_vec()));
        let mut rest = Vec::new();
        self.0.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "nothing after the close frame");
    }
}
