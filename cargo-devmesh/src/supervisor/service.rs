//! One service's life: a task that owns its processes and publishes its
//! state and route. Commands (start, stop, restart) arrive on a channel and
//! answer on a ticket, as with systemctl.
//!
//! A restart is blue/green: the new instance starts on a socket of its own
//! while the old one serves; the route switches when the new one is ready;
//! the old one is stopped once nothing is in flight to it. The front port
//! never changes, and no request fails.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use devmesh::config::Mode;
use devmesh::registry::{Entry, Status};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::command::{Done, Outcome, Refused, Ticket};
use super::process::{self, Exit, Process};
use super::{Supervisor, readiness};
use crate::build::{BinTarget, Built};
use crate::proxy::{Backend, LocalRoute, Route};
use crate::workspace::{Launch, ServiceSpec};

/// A crashed service waits this long before its first restart, doubling
/// with each crash in a row up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often the connections open to replaced instances are counted, while
/// there are some.
const DRAIN_COUNT_EVERY: Duration = Duration::from_secs(1);
/// How often a service that does not answer is checked again.
const HEALTH_RECHECK: Duration = Duration::from_secs(1);
/// An instance that ran this long before crashing resets the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(30);

/// What a service is doing, as `ps` and the API show it: the API writes
/// it and its clients read it back, as this type.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ServiceState {
    pub name: String,
    pub status: Status,
    pub front: SocketAddr,
    pub pid: Option<u32>,
    /// Restarts since the supervisor started that were asked for
    /// (`restart`, `--watch`).
    pub restarts: u32,
    /// Times it exited on its own since the supervisor started (each
    /// followed by a restart with backoff).
    #[serde(default)]
    pub crashes: u32,
    /// Connections still open to instances a restart replaced (WebSockets,
    /// streams): they end on the old instance, which stays until they do.
    pub draining: usize,
    /// The last thing worth knowing: why it crashed, why a build failed.
    pub note: Option<String>,
}

type Reply = oneshot::Sender<Outcome>;

#[derive(Debug)]
enum Message {
    Start(Reply),
    Stop(Reply),
    Restart {
        rebuild: bool,
        /// Cut what is open to the old instance after the grace period.
        now: bool,
        reply: Reply,
    },
    /// A new binary is built (by `--watch`); restart onto it.
    Rebuilt {
        binary: PathBuf,
        reply: Reply,
    },
    Exited {
        instance: u64,
        exit: Exit,
    },
}

/// A handle on a service task; cheap to clone.
#[derive(Debug, Clone)]
pub struct ServiceHandle {
    messages: mpsc::UnboundedSender<Message>,
    pub state: watch::Receiver<ServiceState>,
}

impl ServiceHandle {
    pub fn start(&self) -> Ticket {
        self.send(Message::Start)
    }

    pub fn stop(&self) -> Ticket {
        self.send(Message::Stop)
    }

    /// Restarts it, rebuilding its binary first when `rebuild`; `now` cuts
    /// what is open to the old instance after the grace period.
    pub fn restart(&self, rebuild: bool, now: bool) -> Ticket {
        self.send(|reply| Message::Restart { rebuild, now, reply })
    }

    /// Restarts it onto a binary already built.
    pub fn rebuilt(&self, binary: PathBuf) -> Ticket {
        self.send(|reply| Message::Rebuilt { binary, reply })
    }

    fn send(&self, message: impl FnOnce(Reply) -> Message) -> Ticket {
        let (reply, ticket) = oneshot::channel();
        // A task that has ended drops the reply: the ticket then says so.
        let _ = self.messages.send(message(reply));
        Ticket(ticket)
    }
}

/// A running instance of the service.
struct Instance {
    id: u64,
    process: Process,
    backend: Backend,
    started: Instant,
}

struct Task {
    spec: ServiceSpec,
    supervisor: Arc<Supervisor>,
    state: watch::Sender<ServiceState>,
    route: LocalRoute,
    messages_tx: mpsc::UnboundedSender<Message>,
    binary: Option<PathBuf>,
    current: Option<Instance>,
    next_id: u64,
    crashes_in_a_row: u32,
    restart_at: Option<tokio::time::Instant>,
    /// When to check again whether the running instance answers: set when
    /// a request waited long for it, and while it does not answer.
    check_at: Option<tokio::time::Instant>,
    /// Old instances draining and stopping after a restart; a restart
    /// answers once the new instance serves, without waiting for them.
    retiring: tokio::task::JoinSet<()>,
    /// Those instances, to count what is still open to them.
    draining: Vec<Backend>,
    shutdown: CancellationToken,
}

/// The run's first build, once it is done: binary services wait for it,
/// commands start at once.
pub type FirstBuild = watch::Receiver<Option<Arc<Built>>>;

/// Starts the task of `spec`. A workspace binary waits for `first_build`
/// to have its binary; every service starts its process once
/// `dependencies` are ready.
pub fn spawn(
    spec: ServiceSpec,
    first_build: FirstBuild,
    (front, route): (SocketAddr, LocalRoute),
    dependencies: Vec<watch::Receiver<ServiceState>>,
    supervisor: Arc<Supervisor>,
    shutdown: CancellationToken,
) -> (ServiceHandle, tokio::task::JoinHandle<()>) {
    let status = match spec.launch {
        Launch::Binary { .. } => Status::Building,
        Launch::Command(_) => Status::Starting,
    };
    let state = ServiceState {
        name: spec.name.clone(),
        status,
        front,
        pid: None,
        restarts: 0,
        crashes: 0,
        draining: 0,
        note: None,
    };
    let (state_tx, state_rx) = watch::channel(state);
    route.send_replace(Route::Waiting(status));
    let (messages_tx, messages) = mpsc::unbounded_channel();
    let task = Task {
        spec,
        supervisor,
        state: state_tx,
        route,
        messages_tx: messages_tx.clone(),
        binary: None,
        current: None,
        next_id: 0,
        crashes_in_a_row: 0,
        restart_at: None,
        check_at: None,
        retiring: tokio::task::JoinSet::new(),
        draining: Vec::new(),
        shutdown,
    };
    task.publish_registry();
    let join = tokio::spawn(task.run(messages, first_build, dependencies));
    let handle = ServiceHandle {
        messages: messages_tx,
        state: state_rx,
    };
    (handle, join)
}

impl Task {
    async fn run(
        mut self,
        mut messages: mpsc::UnboundedReceiver<Message>,
        first_build: FirstBuild,
        dependencies: Vec<watch::Receiver<ServiceState>>,
    ) {
        if self.take_first_build(first_build).await {
            if self.spec.mode == Mode::Remote {
                // Its traffic goes to the sandbox: it starts here when its
                // mode says so (`cargo devmesh mode`).
                let name = &self.spec.name;
                self.set_status(
                    Status::Stopped,
                    Some(format!(
                        "runs in the sandbox (`cargo devmesh mode {name} auto` runs it here)"
                    )),
                );
            } else if self.wait_for(dependencies).await {
                let _ = self.start_fresh().await;
            }
        }
        loop {
            let serving = self.current.as_ref().map(|i| i.backend.clone());
            let stalled = async move {
                match serving {
                    Some(backend) => backend.stalled().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = self.shutdown.cancelled() => break,
                () = at(self.restart_at) => {
                    self.restart_at = None;
                    // A failure is reported and rescheduled by `replace`.
                    let _ = self.start_fresh().await;
                }
                () = stalled, if self.check_at.is_none() => self.check_at = Some(tokio::time::Instant::now()),
                // Only while old instances drain: nothing ticks at idle.
                () = tokio::time::sleep(DRAIN_COUNT_EVERY), if !self.draining.is_empty() => self.count_draining(),
                // An old instance stopped: `ps` no longer says it drains.
                Some(_) = self.retiring.join_next(), if !self.retiring.is_empty() => self.count_draining(),
                () = at(self.check_at) => self.check_health().await,
                Some(message) = messages.recv() => self.handle(message).await,
            }
        }
        if let Some(instance) = self.current.take() {
            let _ = instance.process.stop(self.supervisor.grace).await;
        }
        while self.retiring.join_next().await.is_some() {}
        self.set_status(Status::Stopped, None);
    }

    /// Counts what is still open to replaced instances, for `ps` and the
    /// page; forgets those with nothing open.
    fn count_draining(&mut self) {
        self.draining.retain(|backend| backend.open() > 0);
        let open = self.draining.iter().map(Backend::open).sum();
        if self.state.borrow().draining != open {
            self.state.send_modify(|s| s.draining = open);
        }
    }

    /// Checks that the running instance answers, once a request waited long
    /// for it: a hung or stopped (SIGSTOP) process shows as not answering,
    /// and is checked each second until it answers again. A service that
    /// is only slow for one request answers the check and stays ready.
    async fn check_health(&mut self) {
        self.check_at = None;
        let Some(instance) = &self.current else { return };
        let (addr, pid) = (instance.backend.addr, instance.process.pid);
        // A stopped process's socket still accepts (the kernel does): a TCP
        // check alone would call it ready.
        let answers = !crate::platform::is_stopped(pid) && readiness::answers(addr, &self.spec.ready).await;
        let status = self.state.borrow().status;
        match (answers, status) {
            (true, Status::Unresponsive) => {
                self.set_status(Status::Ready, None);
                self.note("answers again".to_owned());
            }
            (true, _) => {}
            (false, _) => {
                if status == Status::Ready {
                    let why = match crate::platform::is_stopped(pid) {
                        true => format!("stopped by a signal, it does not answer (hint: `kill -CONT {pid}`)"),
                        false => "does not answer; requests wait for `run.response_timeout`, then get a 504 \
                                  (hint: `cargo devmesh restart`)"
                            .to_owned(),
                    };
                    self.set_status(Status::Unresponsive, Some(why.clone()));
                    self.note(why);
                }
                self.check_at = Some(tokio::time::Instant::now() + HEALTH_RECHECK);
            }
        }
    }

    /// Takes this service's binary from the run's first build; false when
    /// it has none (the build failed, or the supervisor is stopping).
    async fn take_first_build(&mut self, mut first_build: FirstBuild) -> bool {
        let Some(target) = self.target() else {
            return true;
        };
        let built = tokio::select! {
            () = self.shutdown.cancelled() => return false,
            built = first_build.wait_for(Option::is_some) => match built {
                Ok(built) => built.clone(),
                Err(_) => return false,
            },
        };
        self.binary = built.and_then(|b| b.binaries.get(&target).cloned());
        if self.binary.is_none() {
            self.set_status(Status::Failed, Some("the build failed; fix it and restart".to_owned()));
        }
        self.binary.is_some()
    }

    /// The binary target this service runs, if it is a workspace binary.
    fn target(&self) -> Option<BinTarget> {
        self.spec.bin_target()
    }

    /// Waits until every dependency is ready; false on shutdown.
    async fn wait_for(&self, dependencies: Vec<watch::Receiver<ServiceState>>) -> bool {
        for mut dependency in dependencies {
            let name = dependency.borrow().name.clone();
            if dependency.borrow().status != Status::Ready {
                let waiting = format!("waiting for `{name}` to be ready");
                self.set_status(Status::Starting, Some(waiting.clone()));
                self.note(waiting);
            }
            tokio::select! {
                () = self.shutdown.cancelled() => return false,
                ready = dependency.wait_for(|s| s.status == Status::Ready) => if ready.is_err() { return false },
            }
        }
        true
    }

    async fn handle(&mut self, message: Message) {
        match message {
            Message::Start(reply) => {
                let answer = if self.current.is_some() {
                    Ok(Done::AlreadyRunning)
                } else {
                    self.restart_at = None;
                    self.start_fresh().await
                };
                let _ = reply.send(answer);
            }
            Message::Stop(reply) => {
                self.restart_at = None;
                self.set_status(Status::Stopped, None);
                let answer = match self.current.take() {
                    Some(instance) => {
                        let exit = instance.process.stop(self.supervisor.grace).await;
                        Ok(Done::Stopped {
                            exit: process::describe(&exit),
                        })
                    }
                    None => Ok(Done::WasNotRunning),
                };
                self.state.send_modify(|s| s.pid = None);
                self.publish_registry();
                if let Ok(done) = &answer {
                    self.note(done.to_string());
                }
                let _ = reply.send(answer);
            }
            Message::Restart { rebuild, now, reply } => {
                let answer = match rebuild {
                    true => self.rebuild().await,
                    false => Ok(()),
                };
                let drain = if now {
                    self.supervisor.grace
                } else {
                    self.supervisor.drain
                };
                let answer = match answer {
                    Ok(()) => self.replace(drain).await,
                    Err(e) => Err(e),
                };
                let _ = reply.send(answer);
            }
            Message::Rebuilt { binary, reply } => {
                self.binary = Some(binary);
                let _ = reply.send(self.replace(self.supervisor.drain).await);
            }
            Message::Exited { instance, exit } => {
                if self.current.as_ref().is_some_and(|i| i.id == instance) {
                    let current = self.current.take();
                    if process::killed_from_outside(&exit)
                        && let Some(current) = &current
                    {
                        current.backend.killed();
                    }
                    let ran = current.map(|i| i.started.elapsed()).unwrap_or_default();
                    self.crashed(format!("exited ({})", process::describe(&exit)), ran);
                }
            }
        }
    }

    /// Builds this service's binary; on failure the running instance stays.
    async fn rebuild(&mut self) -> Result<(), Refused> {
        let Some(target) = self.target() else {
            return Ok(());
        };
        let serving = self.current.is_some();
        if !serving {
            self.set_status(Status::Building, None);
        }
        self.note("building".to_owned());
        let built = self.supervisor.builder.build().await;
        match built.map(|mut b| b.binaries.remove(&target)) {
            Ok(Some(binary)) => {
                self.binary = Some(binary);
                Ok(())
            }
            Ok(None) | Err(_) => {
                let refused = if serving {
                    Refused::BuildFailedKept
                } else {
                    Refused::BuildFailed
                };
                if !serving {
                    self.set_status(Status::Failed, Some(refused.to_string()));
                }
                self.note(refused.to_string());
                Err(refused)
            }
        }
    }

    /// Starts an instance when none runs (first start, after a crash or a stop).
    async fn start_fresh(&mut self) -> Outcome {
        if self.binary.is_none() && matches!(self.spec.launch, Launch::Binary { .. }) {
            self.rebuild().await?;
        }
        self.set_status(Status::Starting, None);
        self.replace(self.supervisor.drain).await
    }

    /// Starts a new instance, routes to it once ready, then retires the old
    /// one once nothing is open to it, or after `drain`.
    async fn replace(&mut self, drain: Duration) -> Outcome {
        let began = Instant::now();
        let instance = match self.launch().await {
            Ok(instance) => instance,
            Err(why) => {
                if self.current.is_none() {
                    self.crashed(why.to_string(), began.elapsed());
                } else {
                    self.note(format!("{why}; the running instance is kept"));
                }
                return Err(why);
            }
        };
        let pid = instance.process.pid;
        self.route.send_replace(Route::Ready(instance.backend.clone()));
        let old = self.current.replace(instance);
        let restarted = old.is_some();
        self.set_status(Status::Ready, None);
        self.note(format!(
            "ready on {} (pid {pid}, {:.1?})",
            self.state.borrow().front,
            began.elapsed()
        ));
        if let Some(old) = old {
            self.state.send_modify(|s| s.restarts += 1);
            while self.retiring.try_join_next().is_some() {}
            self.draining.push(old.backend.clone());
            self.retiring
                .spawn(retire(old, drain, self.supervisor.grace, self.shutdown.clone()));
            self.count_draining();
        }
        Ok(if restarted {
            Done::Restarted { pid }
        } else {
            Done::Started { pid }
        })
    }

    /// Spawns an instance and waits until it is ready.
    async fn launch(&mut self) -> Result<Instance, Refused> {
        let no_socket = |e: std::io::Error| Refused::NoSocket(e.to_string());
        let socket = crate::platform::listen(([127, 0, 0, 1], 0).into()).map_err(no_socket)?;
        let addr = socket.local_addr().map_err(no_socket)?;
        let inherit = matches!(
            self.spec.launch,
            Launch::Binary {
                links_devmesh: true,
                ..
            }
        );
        let command = self.command(addr, inherit)?;
        // A program that binds `PORT` itself needs the port free.
        let socket = inherit.then_some(socket);
        let process = self
            .supervisor
            .spawner
            .spawn(command, socket.as_ref(), &self.spec.name, &self.supervisor.logs)
            .await
            .map_err(|e| Refused::CouldNotStart(e.to_string()))?;
        drop(socket);
        self.state.send_modify(|s| s.pid = Some(process.pid));
        self.supervisor.callers.insert(process.pid, &self.spec.name);
        let id = self.next_id;
        self.next_id += 1;
        let ready = tokio::select! {
            () = readiness::wait(addr, &self.spec.ready) => Ok(()),
            exit = process.exited() => Err(Refused::ExitedBeforeReady(process::describe(&exit))),
            () = self.shutdown.cancelled() => Err(Refused::Stopping),
        };
        if let Err(why) = ready {
            let _ = process.stop(self.supervisor.grace).await;
            self.supervisor.callers.remove(process.pid);
            self.state
                .send_modify(|s| s.pid = self.current.as_ref().map(|i| i.process.pid));
            return Err(why);
        }
        let watcher = process.clone();
        let messages = self.messages_tx.clone();
        let callers = Arc::clone(&self.supervisor.callers);
        tokio::spawn(async move {
            let exit = watcher.exited().await;
            callers.remove(watcher.pid);
            let _ = messages.send(Message::Exited { instance: id, exit });
        });
        Ok(Instance {
            id,
            process,
            backend: Backend::new(addr),
            started: Instant::now(),
        })
    }

    /// The command for a new instance listening on `addr`.
    fn command(&self, addr: SocketAddr, inherit: bool) -> Result<std::process::Command, Refused> {
        let spec = &self.spec;
        let mut command = match (&spec.launch, &self.binary) {
            (Launch::Binary { .. }, Some(binary)) => std::process::Command::new(binary),
            (Launch::Binary { .. }, None) => return Err(Refused::NoBinary),
            (Launch::Command(line), _) => {
                let mut command = std::process::Command::new("sh");
                command.arg("-c").arg(shell_script(line));
                command
            }
        };
        command.args(&spec.args).current_dir(&spec.cwd);
        command
            .env("DEVMESH_SERVICE", &spec.name)
            .env("DEVMESH_REGISTRY", self.supervisor.registry.path())
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_FDNAMES");
        if let Some(config) = &self.supervisor.config_path {
            command.env("DEVMESH_CONFIG", config);
        }
        if let Some(dns) = self.supervisor.dns {
            command.env("DEVMESH_DNS", dns.to_string());
        }
        if inherit {
            command.env("LISTEN_FDS", "1").env("LISTEN_FDNAMES", &spec.name);
        } else {
            command
                .env("PORT", addr.port().to_string())
                .env("DEVMESH_LISTEN", addr.to_string());
        }
        if let Some(otlp) = self.supervisor.otlp {
            for (name, value) in crate::telemetry::env(&spec.name, otlp) {
                // The user's own setting (theirs, or the service's) wins.
                if std::env::var_os(name).is_none() && !spec.env.contains_key(name) {
                    command.env(name, value);
                }
            }
        }
        if spec.inject_env {
            for (name, front) in &self.supervisor.fronts {
                command.env(devmesh::name::addr_env_var(name), front.to_string());
            }
        }
        command.envs(&spec.env);
        Ok(command)
    }

    /// Marks a crash and schedules a restart with backoff.
    fn crashed(&mut self, why: String, ran: Duration) {
        if ran >= STABLE_AFTER {
            self.crashes_in_a_row = 0;
        }
        let delay = FIRST_BACKOFF
            .saturating_mul(1 << self.crashes_in_a_row.min(10))
            .min(MAX_BACKOFF);
        self.crashes_in_a_row += 1;
        self.restart_at = Some(tokio::time::Instant::now() + delay);
        self.state.send_modify(|s| s.crashes += 1);
        self.set_status(Status::Crashed, Some(why.clone()));
        self.note(format!("{why}; restarting in {delay:.1?}"));
    }

    fn set_status(&self, status: Status, note: Option<String>) {
        // A service that does not answer keeps its route: a request that
        // reaches it once it answers again is served.
        if !matches!(status, Status::Ready | Status::Unresponsive) {
            self.route.send_replace(Route::Waiting(status));
        }
        self.state.send_modify(|s| {
            s.status = status;
            if !matches!(status, Status::Ready | Status::Starting | Status::Unresponsive) {
                s.pid = self.current.as_ref().map(|i| i.process.pid);
            }
            if note.is_some() || status == Status::Ready {
                s.note = note;
            }
        });
        self.publish_registry();
    }

    /// Writes this service's entry to the registry.
    fn publish_registry(&self) {
        let state = self.state.borrow().clone();
        let mut entry = Entry::new(format!("http://{}", state.front));
        entry.status = state.status;
        entry.pid = state.pid;
        // Said once while it fails: the state folder's guard writes it
        // again once it can, and says so.
        let behind = self.supervisor.registry.is_behind();
        if let Err(e) = self.supervisor.registry.set(&state.name, entry)
            && !behind
        {
            self.supervisor.logs.note(format!(
                "could not update the registry: {e}; services find each other at the ports they had, \
                 and it is written again once it can be"
            ));
        }
    }

    fn note(&self, text: String) {
        self.supervisor.logs.note(format!("{}: {text}", self.spec.name));
    }
}

/// Waits until `at`, or for ever when it is `None`.
async fn at(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Stops an instance the route no longer sends to, once nothing is in
/// flight to it, or after `drain`: what is still open then is cut, and its
/// capture says so.
/// The supervisor stopping ends the wait at once.
async fn retire(old: Instance, drain: Duration, grace: Duration, shutdown: CancellationToken) {
    let drained = tokio::select! {
        drained = tokio::time::timeout(drain, old.backend.idle()) => drained.is_ok(),
        () = shutdown.cancelled() => old.backend.open() == 0,
    };
    if !drained {
        old.backend.cut();
    }
    let _ = old.process.stop(grace).await;
}

/// The script `sh -c` runs for a command line: a simple command replaces
/// the shell (`exec`), so its pid is the service's and one shell is all
/// there is, even for `sh -c '…'` or a Procfile's `exec python3 …`; a line
/// of several (`a && b`, `a; b`, `a & b`, a pipe) runs under the shell, in
/// the same process group. Separators inside quotes, and `2>&1`, are none.
fn shell_script(line: &str) -> String {
    let trimmed = line.trim();
    if trimmed.starts_with("exec ") || several_commands(trimmed) {
        trimmed.to_owned()
    } else {
        format!("exec {trimmed}")
    }
}

/// Whether `line` holds a command separator outside quotes.
fn several_commands(line: &str) -> bool {
    let (mut single, mut double, mut escaped) = (false, false, false);
    let bytes = line.as_bytes();
    for (at, &byte) in bytes.iter().enumerate() {
        match byte {
            _ if escaped => escaped = false,
            b'\\' if !single => escaped = true,
            b'\'' if !double => single = !single,
            b'"' if !single => double = !double,
            _ if single || double => {}
            b';' | b'|' | b'\n' => return true,
            // `2>&1`, `&>file`: a redirection, not a separator.
            b'&' if at > 0 && bytes[at - 1] == b'>' => {}
            b'&' if bytes.get(at + 1) == Some(&b'>') => {}
            b'&' => return true,
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::shell_script;

    #[test]
    fn a_simple_command_replaces_the_shell_and_several_run_under_it() {
        for (line, script) in [
            ("python3 app.py", "exec python3 app.py"),
            ("exec python3 app.py", "exec python3 app.py"),
            ("sh -c 'worker; server'", "exec sh -c 'worker; server'"),
            ("server 2>&1", "exec server 2>&1"),
            ("echo \"a & b\"", "exec echo \"a & b\""),
            ("sleep 3600 & exec server", "sleep 3600 & exec server"),
            ("a && b", "a && b"),
            ("a | b", "a | b"),
        ] {
            assert_eq!(shell_script(line), script, "{line}");
        }
    }
}
