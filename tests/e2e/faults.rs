//! Faults a laptop meets: the state folder's disk full, the network to
//! the sandbox cut and restored. devmesh keeps serving what it can, says
//! what is wrong once, and recovers by itself when the fault ends. (Out of
//! descriptors is in `real_use`.)

use std::io::Write;
use std::time::{Duration, Instant};

use crate::harness::{DEADLINE, Mesh, fixture, get, text};
use crate::remote::{Sandbox, add_config, remote_front};
use crate::tunnel::{TOKEN, callback_url, relay_config, start_relay};

/// The state folder (logs, registry, captures) on a disk that fills up:
/// every service serves on, a restart works, the terminal says once that
/// the logs cannot be written, and once there is room again they are.
#[test]
fn a_full_disk_under_the_state_folder_loses_no_request_and_heals() {
    let mut mesh = Mesh::idle(fixture("mesh")).on_a_small_disk("4m");
    mesh.run(&["beta", "alpha", "files"]);
    for service in ["beta", "alpha", "files"] {
        mesh.wait_ready(service, 1);
    }
    let filler = mesh.state().join("filler");
    fill(&filler);

    // `files` is Python's http.server: it logs every request it serves.
    // A log file's last page may have room for some lines yet: asked
    // until the disk is seen full, each request served.
    let full = |l: &str| l.contains("No space left on device");
    let mut asked = 0;
    while mesh.output.count(full) == 0 {
        assert!(asked < 2000, "{asked} requests logged and no full disk said");
        assert_eq!(get(mesh.front("files"), &format!("/?while-full-{asked}")).0, 200);
        assert_eq!(get(mesh.front("alpha"), "/peer").0, 200);
        asked += 1;
    }
    let restarted = mesh.cli(&["restart", "--no-build", "beta"]);
    assert!(
        restarted.status.success(),
        "a restart on a full disk: {}",
        text(&restarted)
    );
    assert_eq!(get(mesh.front("alpha"), "/peer").0, 200);
    let ps = mesh.cli(&["ps"]);
    assert!(ps.status.success(), "{}", text(&ps));
    // Said once for the logs and once for the registry (the restart
    // changed it twice), not per line, per service or per write.
    let said = mesh.output.matching(full);
    assert_eq!(said.len(), 2, "{said:#?}");
    assert!(
        // Whichever service's log met the full disk first: said once for all.
        said[0].contains("/logs/") && said[0].contains(".log`") && said[1].contains("could not update the registry"),
        "{said:#?}"
    );
    // The registry is behind; `ps` asks the supervisor.
    let beta_in_ps = |ps: &std::process::Output| -> u64 {
        text(ps)
            .lines()
            .find(|l| l.starts_with("beta "))
            .and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
            .expect("beta's pid in `ps`")
    };
    let new_beta = beta_in_ps(&ps);

    std::fs::remove_file(&filler).unwrap();
    let log = mesh.state().join("logs/files.log");
    let deadline = Instant::now() + DEADLINE;
    loop {
        assert_eq!(get(mesh.front("files"), "/?after-room").0, 200);
        if std::fs::read_to_string(&log).unwrap_or_default().contains("after-room") {
            break;
        }
        assert!(Instant::now() < deadline, "files.log was never written again");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Whichever log met the full disk, its service writes again: each
    // prints a line as it starts.
    for service in ["alpha", "beta"] {
        let restarted = mesh.cli(&["restart", "--no-build", service]);
        assert!(restarted.status.success(), "{}", text(&restarted));
    }
    mesh.output.wait_for(1, "the logs written again", |l| {
        l.contains("logs") && l.contains("written again")
    });
    mesh.output.wait_for(1, "the registry written again", |l| {
        l.contains("`registry.json` could be written again")
    });
    // Written again whole: beta as it runs now, restarted once more.
    let beta_now = beta_in_ps(&mesh.cli(&["ps"]));
    assert_ne!(beta_now, new_beta);
    let deadline = Instant::now() + DEADLINE;
    loop {
        let registry = crate::harness::read_json(&mesh.state().join("registry.json"));
        if registry["services"]["beta"]["pid"] == beta_now {
            break;
        }
        assert!(Instant::now() < deadline, "{registry}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(mesh.output.count(full), 2, "and nothing more said of it");
}

/// Writes zeros to `path` until the disk under it is full.
fn fill(path: &std::path::Path) {
    let mut file = std::fs::File::create(path).unwrap();
    let block = vec![0u8; 64 * 1024];
    loop {
        match file.write(&block) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    // The last few bytes too, so that no line fits.
    while file.write(&[0]).is_ok_and(|n| n == 1) {}
}

/// The sandbox's network goes away (its router, as seen from here: this
/// side's link stays up and packets go nowhere) and comes back: calls to
/// a remote service fail fast with a 502 that names it while services
/// here serve on, and afterwards the remote service and the tunnel serve
/// again with no restart.
#[test]
fn the_sandbox_network_cut_and_restored_is_served_again_by_itself() {
    let dir = fixture("mesh");
    let sandbox = Sandbox::on_a_host_of_its_own(dir.path(), "gamma");
    let ip = sandbox.addr.ip();
    let (_relay_dir, config) = relay_config(ip, "");
    let _relay = start_relay(&sandbox, &config, (ip, 7000).into());
    std::fs::write(dir.path().join("tunnel.token"), TOKEN).unwrap();
    add_config(
        dir.path(),
        &format!(
            "[services.beta]\nexpose = true\n\n[tunnel]\nrelay = \"{ip}:7000\"\ntoken_file = \"tunnel.token\"\nnamespace = \"alice\"\n\n\
             [remote.static]\ngamma = \"{}\"",
            sandbox.url()
        ),
    );
    let mesh = Mesh::start_with_env(
        dir,
        &["beta", "alpha"],
        &[("DEVMESH_RUN__RESPONSE_TIMEOUT", "3s")],
        &["beta", "alpha"],
    );
    let gamma = remote_front(&mesh, "gamma");
    let callback = callback_url(&mesh);
    let called_back = || {
        let output = sandbox
            .command("curl")
            .args(["-s", "-m", "3", "-H", &format!("x-devmesh-access: {TOKEN}")])
            .arg(format!("{callback}/whoami"))
            .output()
            .expect("curl runs");
        String::from_utf8_lossy(&output.stdout).starts_with("beta ")
    };
    assert_eq!(get(gamma, "/whoami"), (200, "sandbox gamma".to_owned()));
    assert!(called_back());

    sandbox.network(false);
    let began = Instant::now();
    let (status, body) = get(gamma, "/whoami");
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("gamma"), "the answer names the service: {body}");
    assert!(began.elapsed() < Duration::from_secs(10), "took {:?}", began.elapsed());
    assert_eq!(get(mesh.front("alpha"), "/peer").0, 200, "services here serve on");
    let ps = mesh.cli(&["ps"]);
    assert!(ps.status.success(), "{}", text(&ps));

    sandbox.network(true);
    let deadline = Instant::now() + DEADLINE;
    while get(gamma, "/whoami").0 != 200 {
        assert!(Instant::now() < deadline, "gamma never served again");
        std::thread::sleep(Duration::from_millis(100));
    }
    while !called_back() {
        assert!(Instant::now() < deadline, "the tunnel never served again");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// libfaketime: the wall clock of the supervisor, the CLI and the services
/// set from a file, as a laptop's is by a sleep or an NTP step; their
/// monotonic clocks left alone (`apt-get install faketime`).
const FAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// The clock jumping back two hours, then forward three days: every
/// request is served, a restart works, the terminal says each jump once,
/// and the exchanges are stamped with the clock as it reads.
#[test]
fn the_clock_jumping_back_and_forth_is_said_once_and_disturbs_nothing() {
    assert!(
        std::path::Path::new(FAKETIME).exists(),
        "this test needs libfaketime (hint: `apt-get install faketime`; .ci/run installs it)"
    );
    let offset = tempfile::NamedTempFile::new().unwrap();
    let set_clock = |spec: &str| std::fs::write(offset.path(), spec).unwrap();
    set_clock("+0");
    let file = offset.path().to_str().unwrap();
    let env = [
        ("LD_PRELOAD", FAKETIME),
        ("FAKETIME_TIMESTAMP_FILE", file),
        ("FAKETIME_CACHE_DURATION", "1"),
        ("DONT_FAKE_MONOTONIC", "1"),
    ];
    // rustc hangs under libfaketime: the services are built first, and
    // the mesh's own build finds them built.
    let mesh = Mesh::idle(fixture("mesh"));
    mesh.build();
    let mut mesh = mesh.with_env(&env);
    mesh.run(&["alpha"]);
    for service in ["beta", "alpha"] {
        mesh.wait_ready(service, 1);
    }
    let newest_started = || {
        let listed = mesh.cli(&["traffic", "--jsonl"]).stdout;
        let newest: serde_json::Value =
            serde_json::from_slice(listed.trim_ascii_end().rsplit(|&b| b == b'\n').next().unwrap()).unwrap();
        newest["started_ms"].as_u64().unwrap()
    };
    let real_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    assert_eq!(get(mesh.front("alpha"), "/peer").0, 200);
    let hour = 3_600_000;
    for (spec, offset_ms, said) in [
        ("-2h", -2 * hour, "the system clock jumped back by 2 h 0 min"),
        ("+3d", 72 * hour, "the system clock jumped forward by 74 h 0 min"),
    ] {
        set_clock(spec);
        let jumped = |l: &str| l.contains("the system clock jumped");
        let before = mesh.output.count(jumped);
        mesh.output.wait_for(before + 1, "the jump to be said", jumped);
        let line = mesh.output.matching(jumped).pop().unwrap();
        assert!(line.contains(said), "{line}");
        for _ in 0..20 {
            assert_eq!(get(mesh.front("alpha"), "/peer").0, 200);
        }
        let stamped = newest_started() as i64 - real_ms() as i64;
        assert!(
            (stamped - offset_ms).abs() < 5_000,
            "stamped {stamped} ms off the real clock"
        );
        let restarted = mesh.cli(&["restart", "--no-build", "beta"]);
        assert!(restarted.status.success(), "{}", text(&restarted));
        assert_eq!(get(mesh.front("alpha"), "/peer").0, 200);
        assert!(mesh.cli(&["ps"]).status.success());
        // Said once a jump, not each second after it.
        std::thread::sleep(Duration::from_millis(2_500));
        assert_eq!(
            mesh.output.count(jumped),
            before + 1,
            "{:?}",
            mesh.output.matching(jumped)
        );
    }
}
