//! Service processes: spawned in their own process group, bound to die with
//! the supervisor (the direct child by `PR_SET_PDEATHSIG`, the whole group
//! by the [`watchdog`](super::watchdog)), stopped with SIGTERM, a grace
//! period, then SIGKILL. What a service forked is ended with it.
//!
//! Every process is spawned from one thread that lives as long as the
//! supervisor: `PR_SET_PDEATHSIG` fires when the *thread* that spawned a
//! child exits, so spawning from a pooled thread that may retire would kill
//! healthy services.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::{oneshot, watch};

use super::watchdog::Watchdog;
use crate::logs::Logs;

/// Where the systemd protocol puts the first inherited socket.
const LISTEN_FD: RawFd = 3;

type SpawnResult = io::Result<tokio::process::Child>;

/// Spawns processes from its one long-lived thread.
#[derive(Debug, Clone)]
pub struct Spawner {
    requests: mpsc::Sender<(std::process::Command, oneshot::Sender<SpawnResult>)>,
    watchdog: Arc<Watchdog>,
}

impl Spawner {
    /// Starts the spawning thread and the watchdog; the thread ends when
    /// every `Spawner` clone is dropped.
    pub fn start(grace: Duration) -> io::Result<Spawner> {
        let watchdog = Arc::new(Watchdog::start(grace)?);
        let (requests, incoming) = mpsc::channel::<(std::process::Command, oneshot::Sender<SpawnResult>)>();
        let runtime = tokio::runtime::Handle::current();
        std::thread::Builder::new()
            .name("devmesh-spawner".into())
            .spawn(move || {
                let _runtime = runtime.enter();
                for (command, reply) in incoming {
                    let _ = reply.send(tokio::process::Command::from(command).spawn());
                }
            })
            .expect("the spawner thread starts");
        Ok(Spawner { requests, watchdog })
    }

    /// Spawns `command` as a service process: its own process group, killed
    /// if the supervisor dies, output captured, and `socket` (if any) passed
    /// as descriptor 3.
    pub async fn spawn(
        &self,
        mut command: std::process::Command,
        socket: Option<&std::net::TcpListener>,
        service: &str,
        logs: &Logs,
    ) -> io::Result<Process> {
        let socket_fd = socket.map(AsRawFd::as_raw_fd);
        let supervisor = std::process::id() as libc::pid_t;
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        // SAFETY: the closure runs between fork and exec and only makes
        // async-signal-safe calls (prctl, getppid, dup2, fcntl).
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(io::Error::last_os_error());
                }
                if libc::getppid() != supervisor {
                    // The supervisor died before the line above took hold.
                    libc::_exit(1);
                }
                if let Some(fd) = socket_fd {
                    let result = if fd == LISTEN_FD {
                        libc::fcntl(fd, libc::F_SETFD, 0)
                    } else {
                        libc::dup2(fd, LISTEN_FD)
                    };
                    if result == -1 {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let (reply, child) = oneshot::channel();
        self.requests
            .send((command, reply))
            .map_err(|_| io::Error::other("the spawner thread is gone"))?;
        let mut child = child
            .await
            .map_err(|_| io::Error::other("the spawner thread is gone"))??;
        let pid = child
            .id()
            .ok_or_else(|| io::Error::other("the process exited at once"))?;
        self.watchdog.guard(pid);
        for output in [child.stdout.take().map(boxed), child.stderr.take().map(boxed)]
            .into_iter()
            .flatten()
        {
            tokio::spawn(forward_lines(output, service.to_owned(), logs.clone()));
        }
        let (exited_tx, exited) = watch::channel(None);
        let watchdog = Arc::clone(&self.watchdog);
        tokio::spawn(async move {
            let status = child.wait().await;
            // What it forked goes with it: a leftover would hold its port
            // or files when the service starts again.
            signal_group(pid, libc::SIGKILL);
            watchdog.release(pid);
            let _ = exited_tx.send(Some(status.map_err(|e| e.to_string())));
        });
        Ok(Process { pid, exited })
    }
}

fn boxed(output: impl AsyncRead + Send + Unpin + 'static) -> Box<dyn AsyncRead + Send + Unpin> {
    Box::new(output)
}

async fn forward_lines(output: Box<dyn AsyncRead + Send + Unpin>, service: String, logs: Logs) {
    let mut reader = BufReader::new(output);
    let mut line = Vec::new();
    while let Ok(n) = reader.read_until(b'\n', &mut line).await {
        if n == 0 {
            break;
        }
        let text = String::from_utf8_lossy(&line);
        logs.line(&service, text.trim_end_matches(['\n', '\r']));
        line.clear();
    }
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
        signal_group(self.pid, signal);
    }
}

/// Signals the process group a service leads.
fn signal_group(group: u32, signal: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions; the group is the
    // service's own (process_group(0)), so this reaches nothing else.
    unsafe {
        libc::kill(-(group as libc::pid_t), signal);
    }
}

/// Whether process `pid` is stopped by a signal (SIGSTOP, SIGTSTP, a
/// debugger), from the state letter in `/proc/<pid>/stat`.
pub fn is_stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // The command name in parentheses may hold spaces: the state follows its `)`.
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('T') || rest.starts_with('t'))
    })
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
