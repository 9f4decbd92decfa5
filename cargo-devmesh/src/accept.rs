//! Taking connections and datagrams when the system runs short: an accept
//! that fails (EMFILE: out of descriptors, ENFILE, ENOBUFS) fails again at
//! once while the connection waits in the backlog, and a loop that just
//! tried again burnt a whole core, on the thread that also answers the
//! API. Every listener of the supervisor and the relay goes through
//! [`Backoff`]: the trouble is said once, where the user reads (the
//! supervisor's log, so the terminal and `devmesh.log`), and tried again
//! after a pause that grows.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

/// A failed accept is tried again after this, doubling up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(10);
const MAX_PAUSE: Duration = Duration::from_secs(1);

/// Where a listener's trouble is said.
pub type Say = Arc<dyn Fn(&str) + Send + Sync>;

/// Says in the supervisor's log: the terminal and `devmesh.log`.
pub fn in_log(logs: &crate::logs::Logs) -> Say {
    let logs = logs.clone();
    Arc::new(move |text| logs.note(text))
}

/// Says on stderr, for the relay and for listeners with no log of their own.
pub fn on_stderr(prefix: &'static str) -> Say {
    Arc::new(move |text| eprintln!("{prefix}: {text}"))
}

/// The pause after failures of one listener, and whether they were said.
pub struct Backoff {
    /// What is failing, as the user knows it: "the front port of `orders`".
    what: String,
    say: Say,
    pause: Duration,
    failing: bool,
}

impl Backoff {
    pub fn new(what: impl Into<String>, say: Say) -> Backoff {
        Backoff {
            what: what.into(),
            say,
            pause: FIRST_PAUSE,
            failing: false,
        }
    }

    /// After a failure: said the first time, then a pause before the next try.
    pub async fn failed(&mut self, error: &io::Error) {
        if !self.failing {
            self.failing = true;
            (self.say)(&format!(
                "{}: {error} (hint: `ulimit -n` may be too low); trying again, less often, until it works",
                self.what
            ));
        }
        tokio::time::sleep(self.pause).await;
        self.pause = (self.pause * 2).min(MAX_PAUSE);
    }

    /// After a success: said when it ends a run of failures.
    pub fn succeeded(&mut self) {
        self.pause = FIRST_PAUSE;
        if std::mem::take(&mut self.failing) {
            (self.say)(&format!("{} works again", self.what));
        }
    }
}

/// The next connection on `listener`; failures pause through `backoff`.
/// Cancel-safe, as [`TcpListener::accept`] is.
pub async fn next(listener: &TcpListener, backoff: &mut Backoff) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(accepted) => {
                backoff.succeeded();
                return accepted;
            }
            Err(e) => backoff.failed(&e).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Out of descriptors with a connection waiting: the accept fails at
    /// once each time it is tried, so the tries must be spaced out, and it
    /// is said once, and again when it passes.
    #[tokio::test]
    async fn failures_are_said_once_and_spaced_out() {
        let said = Arc::new(Mutex::new(Vec::<String>::new()));
        let say: Say = {
            let said = Arc::clone(&said);
            Arc::new(move |text| said.lock().unwrap().push(text.to_owned()))
        };
        let mut backoff = Backoff::new("the front port of `orders`", say);
        let error = io::Error::from_raw_os_error(libc::EMFILE);
        let started = tokio::time::Instant::now();
        for _ in 0..5 {
            backoff.failed(&error).await;
        }
        // 10 + 20 + 40 + 80 + 160 ms, never at once.
        assert!(
            started.elapsed() >= Duration::from_millis(310),
            "{:?}",
            started.elapsed()
        );
        backoff.succeeded();
        backoff.succeeded();
        let said = said.lock().unwrap();
        assert_eq!(said.len(), 2, "{said:?}");
        assert!(
            said[0].contains("`orders`") && said[0].contains("ulimit -n"),
            "{said:?}"
        );
        assert!(said[1].contains("again"), "{said:?}");
    }
}
