//! Service processes: spawned in their own process group, bound to die with
//! the supervisor (the whole group, by the [`watchdog`](super::watchdog)),
//! stopped with SIGTERM, a grace period, then SIGKILL. What a service
//! forked is ended with it.
//!
//! A service that links devmesh gets its listening socket as descriptor 3
//! (the systemd protocol). The supervisor holds descriptor 3 from its
//! first instruction ([`reserve_listen_fd`]) and puts each service's socket
//! there only for the moment of its spawn, so that spawning needs no code
//! between fork and exec: std then spawns with `posix_spawn` (a vfork),
//! which does not copy the supervisor's page tables as a fork does (0.55 ms
//! less a spawn for a 12 MiB process, measured; a restart's whole
//! overhead is about a millisecond).

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::watchdog::Watchdog;
use crate::logs::Logs;

/// Where the systemd protocol puts the first inherited socket.
const LISTEN_FD: RawFd = 3;

/// A close-on-exec `/dev/null` to put back at [`LISTEN_FD`] after a spawn;
/// -1 when descriptor 3 could not be reserved (it was in use at start).
static RESERVE: AtomicI32 = AtomicI32::new(-1);
/// One spawn at a time: descriptor 3 holds one socket at a time.
static SPAWNING: Mutex<()> = Mutex::new(());

/// Holds descriptor 3 for services' sockets. Call it first thing in
/// `main`, before anything else opens a descriptor; if 3 is taken by then
/// (inherited from the shell), spawns fall back to fork with a `dup2`.
pub fn reserve_listen_fd() {
    // SAFETY: plain descriptor calls on descriptors this function opens;
    // descriptor 3 is only taken when it is free.
    unsafe {
        if libc::fcntl(LISTEN_FD, libc::F_GETFD) != -1 {
            return;
        }
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if null < 0 {
            return;
        }
        let held = if null == LISTEN_FD {
            null
        } else {
            let held = libc::fcntl(null, libc::F_DUPFD_CLOEXEC, LISTEN_FD);
            if held != LISTEN_FD {
                libc::close(held);
                libc::close(null);
                return;
            }
            held
        };
        // A second /dev/null to restore descriptor 3 from after each spawn.
        let spare = libc::fcntl(held, libc::F_DUPFD_CLOEXEC, LISTEN_FD + 1);
        if spare >= 0 {
            RESERVE.store(spare, Ordering::SeqCst);
        }
    }
}

/// Spawns a process that is no service (`cargo build`) while no service's
/// socket sits at descriptor 3, so that it never inherits one.
pub fn spawn_other(command: &mut tokio::process::Command) -> io::Result<tokio::process::Child> {
    let _one_at_a_time = SPAWNING.lock().unwrap_or_else(|e| e.into_inner());
    command.spawn()
}

/// Spawns service processes, and tells the watchdog of each.
#[derive(Debug, Clone)]
pub struct Spawner {
    watchdog: Arc<Watchdog>,
}

impl Spawner {
    /// Starts the watchdog.
    pub fn start(grace: Duration) -> io::Result<Spawner> {
        Ok(Spawner {
            watchdog: Arc::new(Watchdog::start(grace)?),
        })
    }

    /// Ends every service process group now, through the watchdog.
    pub fn end_all(&self) {
        self.watchdog.end_all();
    }

    /// Spawns `command` as a service process: its own process group, ended
    /// if the supervisor dies, output captured, and `socket` (if any)
    /// passed as descriptor 3.
    pub async fn spawn(
        &self,
        mut command: std::process::Command,
        socket: Option<&std::net::TcpListener>,
        service: &str,
        logs: &Logs,
    ) -> io::Result<Process> {
        // One pipe for both, as a terminal is: lines keep the order the
        // service wrote them in, and one thread reads them (see
        // `logs::follow_output`). The parent's ends of the write side close
        // with `command`, when the spawn is done.
        let (output, output_writer) = io::pipe()?;
        command
            .stdin(Stdio::null())
            .stdout(output_writer.try_clone()?)
            .stderr(output_writer)
            .process_group(0);
        let mut child = spawn_with_socket(command, socket.map(AsRawFd::as_raw_fd))?;
        let pid = child
            .id()
            .ok_or_else(|| io::Error::other("the process exited at once"))?;
        self.watchdog.guard(pid);
        crate::logs::follow_output(output, service, logs)?;
        let (exited_tx, exited) = watch::channel(None);
        let watchdog = Arc::clone(&self.watchdog);
        tokio::spawn(async move {
            let status = child.wait().await;
            // What it forked goes with it: a leftover would hold its port
            // or files when the service starts again.
            crate::platform::signal_group(pid, libc::SIGKILL);
            watchdog.release(pid);
            let _ = exited_tx.send(Some(status.map_err(|e| e.to_string())));
        });
        Ok(Process { pid, exited })
    }
}

/// Spawns `command` with `socket` at descriptor 3: moved there for the
/// spawn when descriptor 3 is reserved, else `dup2`ed there in the child.
fn spawn_with_socket(mut command: std::process::Command, socket: Option<RawFd>) -> io::Result<tokio::process::Child> {
    let _one_at_a_time = SPAWNING.lock().unwrap_or_else(|e| e.into_inner());
    let reserve = RESERVE.load(Ordering::SeqCst);
    let Some(socket) = socket else {
        return tokio::process::Command::from(command).spawn();
    };
    if reserve < 0 {
        // SAFETY: the closure runs between fork and exec and makes only
        // async-signal-safe calls (dup2, fcntl).
        unsafe {
            command.pre_exec(move || {
                let moved = if socket == LISTEN_FD {
                    libc::fcntl(socket, libc::F_SETFD, 0)
                } else {
                    libc::dup2(socket, LISTEN_FD)
                };
                if moved == -1 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(())
                }
            });
        }
        return tokio::process::Command::from(command).spawn();
    }
    // Descriptor 3 is this module's (reserved at start, changed only under
    // `SPAWNING`): inherited, the child has the socket there.
    crate::platform::place_fd(socket, LISTEN_FD, false)?;
    let spawned = tokio::process::Command::from(command).spawn();
    // Back to a close-on-exec /dev/null, so no later child inherits the
    // socket and the supervisor keeps no reference to it.
    let _ = crate::platform::place_fd(reserve, LISTEN_FD, true);
    spawned
}

/// How a process ended, as its waiter saw it.
pub type Exit = Result<ExitStatus, String>;

/// A running service process.
#[derive(Debug, Clone)]
pub struct Process {
    pub pid: u32,
    /// `Some` once the process has exited.
    exited: watch::Receiver<Option<Exit>>,
}

impl Process {
    /// Waits for the process to exit.
    pub async fn exited(&self) -> Exit {
        let mut exited = self.exited.clone();
        match exited.wait_for(Option::is_some).await {
            Ok(exit) => exit.clone().expect("waited for Some"),
            Err(_) => Err("its waiter ended".to_owned()),
        }
    }

    /// SIGTERM to the whole group, `grace` to exit, then SIGKILL.
    pub async fn stop(&self, grace: Duration) -> Exit {
        self.signal(libc::SIGTERM);
        match tokio::time::timeout(grace, self.exited()).await {
            Ok(exit) => exit,
            Err(_) => {
                self.signal(libc::SIGKILL);
                self.exited().await
            }
        }
    }

    fn signal(&self, signal: libc::c_int) {
        crate::platform::signal_group(self.pid, signal);
    }
}

/// Whether a process was ended by another (SIGKILL from the OOM killer or
/// a user, SIGTERM, SIGINT, SIGHUP), not by its own fault (SIGSEGV,
/// SIGABRT, an exit code).
pub fn killed_from_outside(exit: &Exit) -> bool {
    use std::os::unix::process::ExitStatusExt;
    let outside = [libc::SIGKILL, libc::SIGTERM, libc::SIGINT, libc::SIGHUP];
    exit.as_ref()
        .is_ok_and(|status| status.signal().is_some_and(|signal| outside.contains(&signal)))
}

/// `exit status 1`, `killed by SIGSEGV`: how a process ended, in words.
pub fn describe(exit: &Exit) -> String {
    use std::os::unix::process::ExitStatusExt;
    match exit {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => format!("exit status {code}"),
            (None, Some(signal)) => format!("killed by signal {signal}"),
            _ => status.to_string(),
        },
        Err(e) => format!("unknown exit ({e})"),
    }
}
