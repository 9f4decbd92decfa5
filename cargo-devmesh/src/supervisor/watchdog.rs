//! The watchdog: a small process of its own that ends every service's
//! process group once the supervisor is gone, however it went (SIGKILL, a
//! panic, a closed terminal, a test process that ended).
//!
//! `PR_SET_PDEATHSIG` reaches only a service's direct child: a command
//! such as `npm run dev` or `sh -c 'worker & exec server'` forks, and the
//! forked processes outlived a killed supervisor. The watchdog holds the
//! read end of a pipe whose only write end is the supervisor's; the kernel
//! closes it when the supervisor dies (or when the mesh is dropped), and
//! the watchdog then signals each group it was told of. This works on any
//! Unix, pdeathsig or not.
//!
//! The watchdog is a POSIX shell script (below), not a re-run of our own
//! binary: a mesh started by a library user (a test) has no binary of ours
//! to run. It runs in a process group of its own, so a Ctrl-C in the
//! terminal reaches the supervisor (which stops services gracefully) and
//! not the watchdog, and it ignores the signals a closing terminal sends.

use std::io::{self, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

/// Reads `+GROUP` and `-GROUP` lines until its input closes, then sends
/// SIGTERM to each group still listed, polls every 20 ms for up to
/// `$DEVMESH_GRACE_POLLS` polls while any is left, and SIGKILLs what is.
/// (`sleep 0.02` takes a fraction, as GNU, BusyBox and BSD/macOS sleep do.)
const SCRIPT: &str = r#"
trap '' INT HUP TERM QUIT PIPE
set --
while IFS= read -r line; do
  case $line in
    +[0-9]*) set -- "$@" "${line#+}" ;;
    -[0-9]*) gone=${line#-}; for group do shift; [ "$group" = "$gone" ] || set -- "$@" "$group"; done ;;
  esac
done
[ $# -gt 0 ] || exit 0
for group do kill -s TERM -- "-$group" 2>/dev/null; done
polls=0
while [ "$polls" -lt "$DEVMESH_GRACE_POLLS" ]; do
  alive=
  for group do kill -s 0 -- "-$group" 2>/dev/null && alive=1; done
  [ -n "$alive" ] || exit 0
  sleep 0.02
  polls=$((polls + 1))
done
for group do kill -s KILL -- "-$group" 2>/dev/null; done
"#;

/// The supervisor's end: tells the watchdog which groups are services'.
#[derive(Debug)]
pub struct Watchdog {
    /// The pipe's write end; closed only when the supervisor goes.
    pipe: Mutex<Option<ChildStdin>>,
    /// Kept so the watchdog is reaped when it exits after the supervisor's
    /// clean exit (it then has nothing left to end).
    _process: Child,
}

impl Watchdog {
    /// Starts the watchdog; `grace` is how long groups have between
    /// SIGTERM and SIGKILL.
    pub fn start(grace: Duration) -> io::Result<Watchdog> {
        let polls = grace.as_millis().div_ceil(20);
        let mut process = Command::new("/bin/sh")
            .args(["-c", SCRIPT])
            .env("DEVMESH_GRACE_POLLS", polls.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()?;
        // std makes the pipe close-on-exec: services never hold its write end.
        let pipe = process.stdin.take().expect("stdin is piped");
        Ok(Watchdog {
            pipe: Mutex::new(Some(pipe)),
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

    /// Ends every group still guarded, now: the watchdog's pipe closes as
    /// if the supervisor had died. For a mesh dropped without a shutdown.
    pub fn end_all(&self) {
        self.pipe.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    fn tell(&self, sign: char, group: u32) {
        let mut pipe = self.pipe.lock().unwrap_or_else(|e| e.into_inner());
        let Some(pipe) = pipe.as_mut() else { return };
        if let Err(e) = writeln!(pipe, "{sign}{group}") {
            eprintln!("devmesh: the watchdog that ends services if the supervisor dies is gone ({e})");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two groups, one that ignores SIGTERM: both end once the pipe closes,
    /// the second after the grace period; a released group is left alone.
    #[test]
    fn ends_the_groups_it_guards_when_its_pipe_closes() {
        let spawn = |script: &str| {
            Command::new("/bin/sh")
                .args(["-c", script])
                .process_group(0)
                .spawn()
                .unwrap()
        };
        let mut polite = spawn("exec sleep 60");
        let mut stubborn = spawn("trap '' TERM; sleep 60 & wait");
        let mut released = spawn("exec sleep 60");
        let watchdog = Watchdog::start(Duration::from_millis(200)).unwrap();
        for child in [&polite, &stubborn, &released] {
            watchdog.guard(child.id());
        }
        watchdog.release(released.id());
        watchdog.end_all();
        assert!(polite.wait().unwrap().code().is_none(), "ended by a signal");
        assert!(
            stubborn.wait().unwrap().code().is_none(),
            "killed after the grace period"
        );
        assert!(
            released.try_wait().unwrap().is_none(),
            "a released group is not signalled"
        );
        released.kill().unwrap();
        released.wait().unwrap();
    }
}
