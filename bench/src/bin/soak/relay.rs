//! One relay under many tunnels that come and go (see `main.rs`). Each
//! tunnel is a real supervisor (`cargo devmesh run` on a workspace of one
//! exposed service, nginx behind it) in a slot of its own: it lives a
//! random while, is killed with SIGKILL, and comes back. Probers ask every
//! tunnel through the relay's public port; garbage arrives at its doors.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devmesh_bench::{Guard, open_fds, processes_mentioning, repo, rss_kib, run, start_nginx, verdict};

use crate::{Journal, Random, print_flat};

const TOKEN: &str = "soak-0123456789abcdef";
/// How long a supervisor lives before its SIGKILL, and how long its slot
/// then stays empty.
const LIFE: (Duration, Duration) = (Duration::from_secs(30), Duration::from_secs(240));
const GONE: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(10));
/// A tunnel that has not served this long after its supervisor started
/// counts as failed.
const COME_UP: Duration = Duration::from_secs(30);
/// Starts spread over this long at first, so that 200 cargo reads of
/// their workspaces do not all land at once.
const RAMP: Duration = Duration::from_secs(60);
const PROBERS: usize = 8;
/// A garbage connection this often.
const GARBAGE_EVERY: Duration = Duration::from_millis(100);

/// One tunnel's place: its supervisor while one runs.
#[derive(Debug, Default)]
struct Slot {
    child: Option<Child>,
    /// Counts its supervisors, so that a probe's answer is held against
    /// the supervisor it was sent to.
    generation: u64,
    /// Its public address, from its registry, once known (it stays the
    /// same from supervisor to supervisor).
    public: Option<SocketAddr>,
    /// Served since this supervisor started: from then on, every probe
    /// must be answered.
    live: bool,
    started: Option<Instant>,
    /// When this supervisor is killed, or when the next one starts.
    next: Option<Instant>,
}

/// What the probers and the garbage did.
#[derive(Debug, Default)]
struct Counts {
    probes: AtomicU64,
    served: AtomicU64,
    /// Probes of a tunnel not yet up, or killed while asked: not failures.
    excused: AtomicU64,
    garbage: AtomicU64,
}

pub async fn soak(minutes: usize, tunnels: usize) {
    println!("building cargo-devmesh and devmesh-relay (release)…");
    run(Command::new("cargo").args(["build", "--quiet", "--release", "-p", "cargo-devmesh"]));
    let work = tempfile::tempdir().expect("a temp dir");
    let site = work.path().join("site");
    std::fs::create_dir_all(&site).expect("a folder");
    std::fs::write(site.join("small"), "ok\n").expect("written");
    let nginx_port = free_range(1);
    let nginx_dir = work.path().join("nginx");
    std::fs::create_dir_all(&nginx_dir).expect("a folder");
    let nginx = Guard(start_nginx(
        &nginx_dir,
        &format!(
            "  server {{\n    listen 127.0.0.1:{nginx_port};\n    root {};\n    location / {{ }}\n  }}",
            site.display()
        ),
    ));

    let (relay, control) = start_relay(work.path(), tunnels);
    let relay_pid = relay.0.id();
    let journal = Arc::new(Journal::new(false));
    // The relay's own descriptors before any tunnel: where they return to.
    let baseline_fds = open_fds(relay_pid);
    let baseline_rss = rss_kib(relay_pid);
    let slots: Arc<Vec<Mutex<Slot>>> = Arc::new((0..tunnels).map(|_| Mutex::default()).collect());
    let spaces: Vec<PathBuf> = (0..tunnels)
        .map(|i| workspace(work.path(), i, control, nginx_port))
        .collect();
    let counts = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let probers: Vec<_> = (0..PROBERS)
        .map(|prober| {
            let (slots, counts, journal, stop) = (
                Arc::clone(&slots),
                Arc::clone(&counts),
                Arc::clone(&journal),
                Arc::clone(&stop),
            );
            std::thread::spawn(move || probe(0x5eed + prober as u64, &slots, &counts, &journal, &stop))
        })
        .collect();
    let garbage = {
        let (slots, counts, stop) = (Arc::clone(&slots), Arc::clone(&counts), Arc::clone(&stop));
        std::thread::spawn(move || send_garbage(control, &slots, &counts, &stop))
    };

    println!(
        "\n{tunnels} tunnels through one relay for {minutes} minutes (each supervisor lives {:?} to {:?}, then SIGKILL);",
        LIFE.0, LIFE.1
    );
    println!("the relay's figures each minute:");
    println!(
        "{:>6} {:>8} {:>9} {:>8} {:>8} {:>10} {:>6} {:>8} {:>8}",
        "minute", "up now", "probes", "served", "failed", "RSS KiB", "fds", "starts", "kills"
    );
    let mut random = Random::seeded();
    let began = Instant::now();
    for (i, slot) in slots.iter().enumerate() {
        slot.lock().expect("a slot").next = Some(began + RAMP.mul_f64(i as f64 / tunnels as f64));
    }
    let (mut rss, mut fds) = (Vec::new(), Vec::new());
    let mut relay_exited = None;
    for minute in 1..=minutes {
        let end = began + Duration::from_secs(60 * minute as u64);
        while Instant::now() < end {
            for (i, slot) in slots.iter().enumerate() {
                tend(i, &mut slot.lock().expect("a slot"), &spaces[i], &journal, &mut random);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if relay_exited.is_none() {
            relay_exited = std::fs::read_to_string(format!("/proc/{relay_pid}/stat"))
                .ok()
                .filter(|stat| !stat.contains(") Z "))
                .is_none()
                .then_some(minute);
        }
        let up = slots.iter().filter(|s| s.lock().expect("a slot").live).count();
        rss.push(rss_kib(relay_pid) as f64);
        fds.push(open_fds(relay_pid) as f64);
        println!(
            "{minute:>6} {up:>8} {:>9} {:>8} {:>8} {:>10} {:>6} {:>8} {:>8}",
            counts.probes.load(Ordering::Relaxed),
            counts.served.load(Ordering::Relaxed),
            journal.failures.lock().expect("journal").len(),
            rss.last().copied().unwrap_or(0.0),
            fds.last().copied().unwrap_or(0.0),
            journal.count("start "),
            journal.count("kill "),
        );
    }

    stop.store(true, Ordering::Relaxed);
    for prober in probers {
        let _ = prober.join();
    }
    let _ = garbage.join();
    for slot in slots.iter() {
        if let Some(mut child) = slot.lock().expect("a slot").child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
    // Every link is gone: the relay must hold what it held before any,
    // and the public port it keeps for each tunnel it has known (a
    // tunnel's URL outlives its supervisor).
    let known = slots
        .iter()
        .filter(|s| s.lock().expect("a slot").public.is_some())
        .count();
    let expected_fds = baseline_fds + known;
    let deadline = Instant::now() + Duration::from_secs(30);
    while open_fds(relay_pid) > expected_fds && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let (after_fds, after_rss) = (open_fds(relay_pid), rss_kib(relay_pid));
    drop(relay);
    drop(nginx);
    let leftovers = processes_mentioning(&work.path().to_string_lossy());

    println!(
        "\n{minutes} minutes: {} supervisors started, {} killed with SIGKILL; {} garbage connections",
        journal.count("start "),
        journal.count("kill "),
        counts.garbage.load(Ordering::Relaxed)
    );
    println!(
        "  probes {}: served {}, excused {} (a tunnel not up yet, or killed while asked)",
        counts.probes.load(Ordering::Relaxed),
        counts.served.load(Ordering::Relaxed),
        counts.excused.load(Ordering::Relaxed)
    );
    // A failure is put beside the last event of its own tunnel.
    let failed = journal.print_failures(40, |f| f.split(':').next().unwrap_or("").to_owned() + " ", |_| true);
    println!("\ntargets:");
    println!(
        "  every live tunnel served:                        {} ({failed} failed)",
        verdict(failed == 0)
    );
    match relay_exited {
        Some(minute) => println!("  the relay served throughout:                     MISSED (gone by minute {minute})"),
        None => println!("  the relay served throughout:                     held"),
    }
    print_flat("the relay's RSS", &rss);
    println!(
        "  the relay's descriptors back to their start once every tunnel is gone: {} ({baseline_fds} before any, {after_fds} after, \
         {known} of them the public ports of the tunnels it knows; RSS {baseline_rss} KiB before, {after_rss} KiB after)",
        verdict(after_fds <= expected_fds)
    );
    println!(
        "  no process left:                                 {}",
        verdict(leftovers.is_empty())
    );
    for (pid, command) in &leftovers {
        println!("    left: {pid} {command}");
    }
}

/// Starts, kills or notices slot `i`'s supervisor as its times say.
fn tend(i: usize, slot: &mut Slot, space: &Path, journal: &Journal, random: &mut Random) {
    let now = Instant::now();
    if let Some(child) = &mut slot.child
        && let Ok(Some(status)) = child.try_wait()
    {
        journal.failure(format!("t{i}: its supervisor exited by itself: {status}"));
        slot.child = None;
        slot.live = false;
        slot.next = Some(now + GONE.0);
    }
    if slot.public.is_none() {
        slot.public = public_address(&space.join("state"));
    }
    if slot.child.is_some()
        && !slot.live
        && let Some(started) = slot.started
        && now - started > COME_UP
    {
        journal.failure(format!(
            "t{i}: its tunnel did not serve within {COME_UP:?} of its start"
        ));
        slot.started = None;
    }
    if slot.next.is_none_or(|next| now < next) {
        return;
    }
    match slot.child.take() {
        Some(mut child) => {
            slot.live = false;
            let _ = child.kill();
            let _ = child.wait();
            journal.event(format!("kill t{i} "));
            slot.next = Some(now + random.between(GONE.0, GONE.1));
        }
        None => {
            slot.child = Some(start_supervisor(space));
            slot.generation += 1;
            slot.started = Some(now);
            journal.event(format!("start t{i} "));
            slot.next = Some(now + random.between(LIFE.0, LIFE.1));
        }
    }
}

/// Asks random tunnels through the relay, each on a connection of its
/// own, until `stop`. A tunnel that has served once since its supervisor
/// started must serve every time until that supervisor is killed.
fn probe(seed: u64, slots: &[Mutex<Slot>], counts: &Counts, journal: &Journal, stop: &AtomicBool) {
    let mut random = Random(seed | 1);
    while !stop.load(Ordering::Relaxed) {
        let i = random.below(slots.len());
        let (public, generation, live) = {
            let slot = slots[i].lock().expect("a slot");
            match (slot.public, &slot.child) {
                (Some(public), Some(_)) => (public, slot.generation, slot.live),
                _ => {
                    drop(slot);
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
            }
        };
        counts.probes.fetch_add(1, Ordering::Relaxed);
        let answer = get_small(public);
        let mut slot = slots[i].lock().expect("a slot");
        let same = slot.generation == generation && slot.child.is_some();
        match answer {
            Ok(()) => {
                counts.served.fetch_add(1, Ordering::Relaxed);
                if same {
                    slot.live = true;
                }
            }
            Err(e) if live && same && slot.live => {
                journal.failure(format!("t{i}: a live tunnel at {public} failed: {e}"))
            }
            Err(_) => {
                counts.excused.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// `GET /small` with the team token, on a connection of its own; an
/// answer that takes over 10 s is a failure, not a hang.
fn get_small(addr: SocketAddr) -> Result<(), String> {
    let request =
        format!("GET /small HTTP/1.1\r\nhost: {addr}\r\nx-devmesh-access: {TOKEN}\r\nconnection: close\r\n\r\n");
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("connecting: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("sending: {e}"))?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|e| format!("reading: {e}"))?;
    if answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok\n") {
        Ok(())
    } else {
        Err(answer.lines().next().unwrap_or("an empty answer").to_owned())
    }
}

/// Sends the relay something that is not a tunnel, again and again: random
/// bytes or a half-finished handshake at its control port, a caller that
/// says nothing or sends junk at a tunnel's public port.
fn send_garbage(control: SocketAddr, slots: &[Mutex<Slot>], counts: &Counts, stop: &AtomicBool) {
    let mut random = Random(0x9e37_79b9_7f4a_7c15);
    let mut silent = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(GARBAGE_EVERY);
        let public = slots[random.below(slots.len())].lock().expect("a slot").public;
        let target = match random.below(2) {
            0 => control,
            _ => public.unwrap_or(control),
        };
        let Ok(mut stream) = TcpStream::connect(target) else {
            continue;
        };
        counts.garbage.fetch_add(1, Ordering::Relaxed);
        let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
        match random.below(4) {
            // Random bytes.
            0 => {
                let bytes: Vec<u8> = (0..random.below(4096)).map(|_| random.next() as u8).collect();
                let _ = stream.write_all(&bytes);
            }
            // A frame header that claims far more than any frame may hold.
            1 => {
                let _ = stream.write_all(&[0x01, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]);
            }
            // Half a request head, then gone.
            2 => {
                let _ = stream.write_all(b"GET /small HTTP/1.1\r\nhost: x\r\nx-devmesh-acc");
            }
            // Silent for a while: the relay must not wait on it forever,
            // nor hold it past its handshake limit.
            _ => {
                silent.push((Instant::now(), stream));
                silent.retain(|(opened, _)| opened.elapsed() < Duration::from_secs(15));
                continue;
            }
        }
        let _ = stream.read(&mut [0; 512]);
    }
}

/// A relay whose ports fit `tunnels` tunnels and whose limits take them
/// all on one token, and its control address.
fn start_relay(work: &Path, tunnels: usize) -> (Guard, SocketAddr) {
    let dir = work.join("relay");
    std::fs::create_dir_all(&dir).expect("a folder");
    let tokens = dir.join("tokens");
    std::fs::write(&tokens, format!("soak: {TOKEN}\n")).expect("tokens");
    let owner_only = std::os::unix::fs::PermissionsExt::from_mode(0o600);
    std::fs::set_permissions(&tokens, owner_only).expect("tokens made 0600");
    let control_port = free_range(1);
    let low = free_range(tunnels);
    std::fs::write(
        dir.join("relay.toml"),
        format!(
            "listen = \"127.0.0.1:{control_port}\"\npublic_host = \"127.0.0.1\"\nports = \"{low}-{}\"\ntokens = \"{}\"\ndata = \"{}\"\n\n[limits]\ntunnels = {}\nconnections = 4096\nhandshake = \"5s\"\n",
            low + tunnels as u16 - 1,
            tokens.display(),
            dir.join("data").display(),
            tunnels
        ),
    )
    .expect("relay.toml");
    let log = std::fs::File::create(dir.join("relay.log")).expect("a log");
    let relay = Command::new(repo().join("target/release/devmesh-relay"))
        .arg("--config")
        .arg(dir.join("relay.toml"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("the relay starts");
    let control = SocketAddr::from(([127, 0, 0, 1], control_port));
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(control).is_err() {
        assert!(Instant::now() < deadline, "the relay never listened on {control}");
        std::thread::sleep(Duration::from_millis(20));
    }
    (Guard(relay), control)
}

/// Slot `i`'s workspace: one service, `web`, remote at nginx and exposed
/// through the relay under a namespace of its own. A workspace per slot,
/// so that each supervisor gets ports of its own from the shared book.
fn workspace(work: &Path, i: usize, control: SocketAddr, nginx_port: u16) -> PathBuf {
    let space = work.join(format!("t{i}"));
    std::fs::create_dir_all(&space).expect("a folder");
    let file = |name: &str, text: String| std::fs::write(space.join(name), text).expect("written");
    file(
        "Cargo.toml",
        "[package]\nname = \"soak-space\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\n[lib]\npath = \"lib.rs\"\n"
            .to_owned(),
    );
    file("lib.rs", String::new());
    file("tunnel.token", TOKEN.to_owned());
    file(
        "devmesh.toml",
        format!(
            "[services.web]\ncommand = \"exec sleep 100000\"\nready = \"tcp\"\nexpose = true\nmode = \"remote\"\n\n\
             [tunnel]\nrelay = \"{control}\"\ntoken_file = \"tunnel.token\"\nnamespace = \"t{i}\"\n\n\
             [remote.static]\nweb = \"http://127.0.0.1:{nginx_port}\"\n"
        ),
    );
    space
}

fn start_supervisor(space: &Path) -> Child {
    let work = space.parent().expect("the work folder");
    Command::new(repo().join("target/release/cargo-devmesh"))
        .args(["run", "--manifest-path"])
        .arg(space.join("Cargo.toml"))
        .env("DEVMESH_STATE_DIR", space.join("state"))
        // One port book for every slot, not the user's.
        .env("XDG_STATE_HOME", work.join("xdg"))
        .env("CARGO_TARGET_DIR", work.join("target"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("a supervisor starts")
}

/// The public address the relay gave the slot's `web`, from its registry.
fn public_address(state: &Path) -> Option<SocketAddr> {
    let registry: serde_json::Value = serde_json::from_slice(&std::fs::read(state.join("registry.json")).ok()?).ok()?;
    registry["services"]["web"]["callback_url"]
        .as_str()?
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .ok()
}

/// The lowest of `n` ports in a row that are free now, past any range
/// this run took before and below Linux's ephemeral range (so that no
/// outgoing connection takes one meanwhile) and devmesh's front ports
/// (24000 on).
fn free_range(n: usize) -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(21000);
    let mut low = NEXT.load(Ordering::Relaxed);
    while usize::from(low) + n < 24000 {
        match (low..low + n as u16).find(|port| TcpListener::bind(("127.0.0.1", *port)).is_err()) {
            Some(taken) => low = taken + 1,
            None => {
                NEXT.store(low + n as u16, Ordering::Relaxed);
                return low;
            }
        }
    }
    panic!("no {n} free ports in a row from 21000 to 24000");
}
