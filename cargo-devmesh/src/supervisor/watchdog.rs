//! The watchdog: a small process of its own that ends every service's
//! process group once the supervisor is gone, however it went (SIGKILL, a
//! panic, a closed terminal).
//!
//! `PR_SET_PDEATHSIG` reaches only a service's direct child: a command
//! such as `npm run dev` or `sh -c 'worker & exec server'` forks, and the
//! forked processes outlived a killed supervisor. The watchdog holds the
//! read end of a pipe whose only write end is the supervisor's; the kernel
//! closes it when the supervisor dies, and the watchdog then signals each
//! group it was told of. This works on any Unix, pdeathsig or not.
//!
//! The watchdog runs in a process group of its own, so a Ctrl-C in the
//! terminal reaches the supervisor (which stops services gracefully) and
//! not the watchdog, and it ignores the signals a closing terminal sends.

use std::collections::BTreeSet;
use std::io::{self, BufRead, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The hidden first argument that makes `cargo-devmesh` a watchdog.
pub const ARG: &str = "__devmesh-watchdog";

/// The supervisor's end: tells the watchdog which groups are services'.
#[derive(Debug)]
pub struct Watchdog {
    /// The pipe's write end; dropped only with the supervisor.
    pipe: Mutex<ChildStdin>,
    /// Kept so the watchdog is reaped when it exits after the supervisor's
    /// clean exit (it then has nothing left to end).
    _process: Child,
}

impl Watchdog {
    /// Starts the watchdog; `grace` is how long groups have between
    /// SIGTERM and SIGKILL.
    pub fn start(grace: Duration) -> io::Result<Watchdog> {
        let mut process = Command::new(std::env::current_exe()?)
            .arg(ARG)
            .arg(grace.as_millis().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()?;
        // std makes the pipe close-on-exec: services never hold its write end.
        let pipe = process.stdin.take().expect("stdin is piped");
        Ok(Watchdog {
            pipe: Mutex::new(pipe),
            _process: process,
        })
    }

    /// Process group `group` is a service's: end it if the supervisor dies.
    pub fn guard(&self, group: u32) {
        self.tell('+', group);
    }

    /// Process group `group` has ended: forget it (its id may be reused).
    pub fn release(&self, group: u32) {
        self.tell('-', group);
    }

    fn tell(&self, sign: char, group: u32) {
        let mut pipe = self.pipe.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = writeln!(pipe, "{sign}{group}") {
            eprintln!("devmesh: the watchdog that ends services if the supervisor dies is gone ({e})");
        }
    }
}

/// The watchdog process: reads `+GROUP` and `-GROUP` lines until the pipe
/// closes, then sends SIGTERM to each group still listed, waits up to
/// `grace` for them to go, and SIGKILLs what is left.
pub fn serve(grace: Duration) {
    for signal in [libc::SIGINT, libc::SIGHUP, libc::SIGTERM, libc::SIGQUIT, libc::SIGPIPE] {
        // SAFETY: setting a signal's disposition to SIG_IGN has no
        // preconditions; nothing else in this process handles signals.
        unsafe {
            libc::signal(signal, libc::SIG_IGN);
        }
    }
    let mut groups = BTreeSet::new();
    for line in io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let (sign, group) = line.split_at(line.len().min(1));
        match (sign, group.parse::<libc::pid_t>()) {
            ("+", Ok(group)) if group > 1 => groups.insert(group),
            ("-", Ok(group)) => groups.remove(&group),
            _ => continue,
        };
    }
    if groups.is_empty() {
        return;
    }
    signal_groups(&groups, libc::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && groups.iter().any(|&g| group_exists(g)) {
        std::thread::sleep(Duration::from_millis(20));
    }
    signal_groups(&groups, libc::SIGKILL);
}

fn signal_groups(groups: &BTreeSet<libc::pid_t>, signal: libc::c_int) {
    for &group in groups {
        // SAFETY: kill has no memory-safety preconditions; a negative pid
        // names a process group, and groups above 1 are services' own.
        unsafe {
            libc::kill(-group, signal);
        }
    }
}

fn group_exists(group: libc::pid_t) -> bool {
    // SAFETY: signal 0 only checks that the group exists.
    unsafe { libc::kill(-group, 0) == 0 }
}
