//! Runs the real `cargo-devmesh` binary on a copy of a fixture workspace.
//!
//! Each mesh gets its own copy, state folder and port range; all share one
//! target folder, so dependencies are built once per test run. Waits are on
//! signals (a line the supervisor prints, a file's content), each with a
//! generous deadline that only a hung run reaches.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Long enough for a first build of the fixture's dependencies on 2 cores.
pub const DEADLINE: Duration = Duration::from_secs(300);

const BINARY: &str = env!("CARGO_BIN_EXE_cargo-devmesh");
pub const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// A copy of `tests/fixtures/<name>`, its `@DEVMESH_PATH@` pointing at the library.
pub fn fixture(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temp dir");
    copy(&Path::new(REPO).join("tests/fixtures").join(name), dir.path());
    let manifest = dir.path().join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).expect("the fixture has a Cargo.toml");
    let library = Path::new(REPO)
        .join("devmesh")
        .canonicalize()
        .expect("the library exists");
    std::fs::write(
        &manifest,
        text.replace("@DEVMESH_PATH@", library.to_str().expect("a UTF-8 path")),
    )
    .expect("the manifest is written");
    dir
}

/// A copy of `examples/shop`, its paths to the library made absolute.
pub fn shop_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temp dir");
    copy(&Path::new(REPO).join("examples/shop"), dir.path());
    let manifest = dir.path().join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).expect("the shop has a Cargo.toml");
    let repo = Path::new(REPO).canonicalize().expect("the repository exists");
    let absolute = format!("path = \"{}/", repo.to_str().expect("a UTF-8 path"));
    std::fs::write(&manifest, text.replace("path = \"../../", &absolute)).expect("the manifest is written");
    dir
}

fn copy(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).expect("the fixture exists") {
        let entry = entry.expect("a directory entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("a file type").is_dir() {
            if entry.file_name() != "target" {
                std::fs::create_dir_all(&target).expect("a folder is made");
                copy(&entry.path(), &target);
            }
        } else {
            std::fs::copy(entry.path(), &target).expect("a file is copied");
        }
    }
}

/// Ten ports for each mesh, distinct within this test run, below the
/// ephemeral range so outgoing connections never take them.
fn port_range() -> String {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 25_000 + (std::process::id() % 40) as u16 * 100 + NEXT.fetch_add(1, Ordering::SeqCst) * 10;
    format!("{base}-{}", base + 9)
}

/// Lines a process printed, and a way to wait for more.
#[derive(Default)]
pub struct Lines {
    lines: Mutex<Vec<String>>,
    added: Condvar,
}

impl Lines {
    pub fn collect(self: &Arc<Self>, output: impl Read + Send + 'static) {
        let lines = Arc::clone(self);
        std::thread::spawn(move || {
            for line in BufReader::new(output).lines().map_while(Result::ok) {
                lines.lines.lock().unwrap().push(line);
                lines.added.notify_all();
            }
        });
    }

    /// How many lines so far match.
    pub fn count(&self, matches: impl Fn(&str) -> bool) -> usize {
        self.lines.lock().unwrap().iter().filter(|l| matches(l)).count()
    }

    /// The lines so far that match.
    pub fn matching(&self, matches: impl Fn(&str) -> bool) -> Vec<String> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| matches(l))
            .cloned()
            .collect()
    }

    /// Waits until `count` lines match `matches`; returns the last of them.
    pub fn wait_for(&self, count: usize, what: &str, matches: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + DEADLINE;
        let mut lines = self.lines.lock().unwrap();
        loop {
            let found: Vec<&String> = lines.iter().filter(|l| matches(l)).collect();
            if found.len() >= count {
                return found[count - 1].clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "timed out waiting for {what}; output:\n{}",
                lines.join("\n")
            );
            lines = self.added.wait_timeout(lines, left).unwrap().0;
        }
    }
}

/// A running `cargo devmesh run`.
pub struct Mesh {
    /// The workspace root.
    pub root: PathBuf,
    /// The copy of a fixture, when the mesh runs on one.
    _copy: Option<tempfile::TempDir>,
    /// Ports, registry, logs: this mesh's alone.
    state: tempfile::TempDir,
    /// Cargo's target folder: shared by meshes on unchanged fixtures.
    target: PathBuf,
    ports: String,
    /// Extra environment for every command (config overrides).
    env: Vec<(String, String)>,
    child: Option<Child>,
    pub output: Arc<Lines>,
    /// The state folder is a small disk of its own, unmounted when dropped.
    small_disk: bool,
}

impl Mesh {
    /// Starts `cargo devmesh run ARGS` on `dir` and waits until every
    /// service in `ready` is ready.
    pub fn start(dir: tempfile::TempDir, args: &[&str], ready: &[&str]) -> Mesh {
        Mesh::idle(dir).started(args, ready)
    }

    /// [`Mesh::start`] with a target folder of its own, for a test that
    /// changes the fixture's code. Copies of a workspace hash alike in
    /// cargo, so in a shared target folder one copy's build would stand in
    /// for another's changed code.
    pub fn start_alone(dir: tempfile::TempDir, args: &[&str], ready: &[&str]) -> Mesh {
        let mut mesh = Mesh::idle(dir);
        mesh.target = mesh.root.join("target");
        mesh.started(args, ready)
    }

    /// [`Mesh::start`] with `env` set for the supervisor and the CLI.
    pub fn start_with_env(dir: tempfile::TempDir, args: &[&str], env: &[(&str, &str)], ready: &[&str]) -> Mesh {
        Mesh::idle(dir).with_env(env).started(args, ready)
    }

    /// `env` set for the supervisor and the CLI.
    pub fn with_env(mut self, env: &[(&str, &str)]) -> Mesh {
        self.env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self
    }

    /// Builds the workspace's binaries as `run` would, before it runs.
    pub fn build(&self) {
        let built = Command::new(env!("CARGO"))
            .arg("build")
            .arg("--manifest-path")
            .arg(self.root.join("Cargo.toml"))
            .env("CARGO_TARGET_DIR", &self.target)
            .status()
            .expect("cargo runs");
        assert!(built.success(), "the workspace builds");
    }

    fn started(mut self, args: &[&str], ready: &[&str]) -> Mesh {
        self.run(args);
        for service in ready {
            self.wait_ready(service, 1);
        }
        self
    }

    /// A mesh whose supervisor is not started, for other commands.
    pub fn idle(copy: tempfile::TempDir) -> Mesh {
        let mut mesh = Mesh::in_place(copy.path());
        mesh._copy = Some(copy);
        mesh
    }

    /// A mesh on a workspace of the repository itself, used as it is
    /// (`examples/shop`); only its state is elsewhere.
    pub fn in_place(root: &Path) -> Mesh {
        Mesh {
            root: root.to_path_buf(),
            _copy: None,
            state: tempfile::tempdir().expect("a temp dir"),
            target: shared_target(),
            ports: port_range(),
            env: Vec::new(),
            child: None,
            output: Arc::default(),
            small_disk: false,
        }
    }

    /// Builds in `target` (a test that changes a copy's code, and builds
    /// tests of it too, with a folder of its own kept between runs).
    pub fn in_target(mut self, target: PathBuf) -> Mesh {
        self.target = target;
        self
    }

    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Puts the state folder on a disk of `size` of its own (a tmpfs, as
    /// `mount` takes sizes: `1m`), so that a test can fill it (root only).
    pub fn on_a_small_disk(mut self, size: &str) -> Mesh {
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(self.state())
            .status()
            .expect("mount runs");
        assert!(
            status.success(),
            "mount a tmpfs on the state folder (the test needs root)"
        );
        self.small_disk = true;
        self
    }

    /// Starts the supervisor (again).
    pub fn run(&mut self, args: &[&str]) {
        let mut child = self
            .command()
            .arg("run")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cargo-devmesh starts");
        self.output.collect(child.stdout.take().unwrap());
        self.output.collect(child.stderr.take().unwrap());
        self.child = Some(child);
    }

    /// `cargo-devmesh` with this mesh's workspace, state and ports.
    pub fn command(&self) -> Command {
        let mut command = Command::new(BINARY);
        command
            .arg("--manifest-path")
            .arg(self.root.join("Cargo.toml"))
            .env("CARGO_TARGET_DIR", &self.target)
            .env("DEVMESH_STATE_DIR", self.state())
            .env("DEVMESH_RUN__PORTS", &self.ports)
            // The user's port book: one for the whole test run, not the real one.
            .env(
                "XDG_STATE_HOME",
                PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("user-state"),
            )
            .env("NO_COLOR", "1")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        command
    }

    /// Builds binary `bin` of the workspace (one that is no service) and
    /// runs it with `args` as a program of the user's would, with the
    /// registry of this mesh: what it printed.
    pub fn run_program(&self, bin: &str, args: &[&str]) -> String {
        let output = self
            .program(bin, args)
            .stdin(Stdio::null())
            .output()
            .expect("the program runs");
        text(&output)
    }

    /// Builds binary `bin` of the workspace (one that is no service): the
    /// command that runs it with `args` and the registry of this mesh.
    pub fn program(&self, bin: &str, args: &[&str]) -> Command {
        let built = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .args(["build", "--quiet", "--bin", bin, "--manifest-path"])
            .arg(self.root.join("Cargo.toml"))
            .env("CARGO_TARGET_DIR", &self.target)
            .status()
            .expect("cargo runs");
        assert!(built.success(), "`{bin}` builds");
        let mut command = Command::new(self.target.join("debug").join(bin));
        command
            .args(args)
            .env("DEVMESH_REGISTRY", self.state().join("registry.json"));
        command
    }

    /// Runs a command that must fail with exit code `code`; what it printed.
    pub fn fails(&self, args: &[&str], code: i32) -> String {
        let output = self.cli(args);
        let printed = text(&output);
        assert_eq!(output.status.code(), Some(code), "{args:?}: {printed}");
        printed
    }

    /// Runs another `cargo devmesh` command against this mesh.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("cargo-devmesh runs")
    }

    pub fn state(&self) -> PathBuf {
        self.state.path().to_path_buf()
    }

    /// Waits for the `nth` "SERVICE: ready" line.
    pub fn wait_ready(&self, service: &str, nth: usize) -> String {
        let prefix = format!("devmesh | {service}: ready on ");
        self.output.wait_for(nth, &format!("`{service}` ready #{nth}"), |l| {
            l.trim_start().starts_with(&prefix)
        })
    }

    /// The front port `ports.json` gives `service`.
    pub fn front(&self, service: &str) -> u16 {
        let ports = read_json(&self.state().join("ports.json"));
        ports[service].as_u64().expect("the service has a port") as u16
    }

    /// The pid the registry gives `service`.
    pub fn pid(&self, service: &str) -> u32 {
        let registry = read_json(&self.state().join("registry.json"));
        registry["services"][service]["pid"]
            .as_u64()
            .expect("the service has a pid") as u32
    }

    /// The supervisor's pid.
    pub fn supervisor_pid(&self) -> u32 {
        self.child.as_ref().expect("the supervisor runs").id()
    }

    /// Sends `signal` to the supervisor and waits for it to exit.
    pub fn signal_and_wait(&mut self, signal: i32) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("the supervisor runs");
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(child.id() as i32, signal) };
        child.wait().expect("the supervisor is waited for")
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if self.small_disk {
            // Lazily: a service the killed supervisor started may still
            // hold a file there for a moment.
            let _ = Command::new("umount").arg("-l").arg(self.state()).status();
        }
    }
}

/// Cargo's target folder for fixtures whose code the tests leave alone.
pub fn shared_target() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fixtures-target")
}

pub fn read_json(path: &Path) -> serde_json::Value {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `GET path` on 127.0.0.1:`port` over a new connection: (status, body).
pub fn get(port: u16, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("the front port accepts");
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("a response");
    let status = response.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// `GET path` on the mesh's API, with its token: the JSON answer.
pub fn api_get(mesh: &Mesh, path: &str) -> serde_json::Value {
    let control = read_json(&mesh.state().join("control.json"));
    let (addr, token) = (control["addr"].as_str().unwrap(), control["token"].as_str().unwrap());
    let mut stream = TcpStream::connect(addr).expect("the API accepts");
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {token}\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("an answer");
    let (head, body) = response.split_once("\r\n\r\n").expect("a head");
    assert!(head.starts_with("HTTP/1.1 200"), "{response}");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// Stdout and stderr of a command, for assertions and failure messages.
pub fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Waits until process `pid` has exited (a zombie counts), up to `timeout`:
/// a pidfd becomes readable when it exits.
#[cfg(target_os = "linux")]
pub fn wait_exit(pid: u32, timeout: std::time::Duration) -> bool {
    // SAFETY: plain syscalls on a descriptor this function owns.
    unsafe {
        let fd = libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) as i32;
        if fd < 0 {
            // ESRCH: it is gone already (and reaped).
            return std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        }
        let mut poll = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let ready = libc::poll(&mut poll, 1, timeout.as_millis() as i32);
        libc::close(fd);
        ready == 1
    }
}

/// Waits until process `pid` has exited (a zombie counts), up to `timeout`:
/// a kqueue tells of its exit (`EVFILT_PROC`, `NOTE_EXIT`).
#[cfg(target_os = "macos")]
pub fn wait_exit(pid: u32, timeout: std::time::Duration) -> bool {
    // SAFETY: plain calls on a kqueue this function owns, with structs of
    // the sizes the calls expect.
    unsafe {
        let queue = libc::kqueue();
        if queue < 0 {
            return false;
        }
        let mut change: libc::kevent = std::mem::zeroed();
        change.ident = pid as libc::uintptr_t;
        change.filter = libc::EVFILT_PROC;
        change.flags = libc::EV_ADD | libc::EV_ONESHOT;
        change.fflags = libc::NOTE_EXIT;
        let wait = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
        };
        let mut event: libc::kevent = std::mem::zeroed();
        let got = libc::kevent(queue, &change, 1, &mut event, 1, &wait);
        let gone = got < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        libc::close(queue);
        gone || (got == 1 && event.flags & libc::EV_ERROR == 0) || (got == 1 && event.data == libc::ESRCH as isize)
    }
}

/// Waits until the inspector has `count` complete exchanges that `matches`.
pub fn exchanges(mesh: &Mesh, count: usize, matches: impl Fn(&serde_json::Value) -> bool) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let output = mesh.cli(&["traffic", "--jsonl"]);
        assert!(output.status.success(), "{}", text(&output));
        let found: Vec<serde_json::Value> = output
            .stdout
            .split(|&b| b == b'\n')
            .filter(|line| !line.is_empty())
            .map(|line| serde_json::from_slice(line).expect("a JSON line"))
            .filter(|e: &serde_json::Value| e["complete"] == true && matches(e))
            .collect();
        if found.len() >= count {
            assert_eq!(found.len(), count, "more exchanges than requests");
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {count} exchanges captured",
            found.len()
        );
        // Exchanges are recorded just after their answer: look again soon.
        std::thread::yield_now();
    }
}
