//! What a command to a service (start, stop, restart) answers: what was
//! done, or why it was not — the types the API writes and its clients read.

use tokio::sync::oneshot;

/// What a command did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "done", rename_all = "snake_case")]
pub enum Done {
    Started {
        pid: u32,
    },
    Restarted {
        pid: u32,
    },
    /// How the process ended, in words.
    Stopped {
        exit: String,
    },
    AlreadyRunning,
    WasNotRunning,
}

impl std::fmt::Display for Done {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Done::Started { pid } => write!(f, "started (pid {pid})"),
            Done::Restarted { pid } => write!(f, "restarted (pid {pid})"),
            Done::Stopped { exit } => write!(f, "stopped ({exit})"),
            Done::AlreadyRunning => f.write_str("already running"),
            Done::WasNotRunning => f.write_str("was not running"),
        }
    }
}

/// Why a command was not done.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the build failed; the running instance is kept")]
    BuildFailedKept,
    #[error("the build failed; fix it and restart")]
    BuildFailed,
    #[error("it has no binary yet")]
    NoBinary,
    #[error("could not get a socket: {0}")]
    NoSocket(String),
    #[error("could not start: {0}")]
    CouldNotStart(String),
    #[error("exited before it was ready ({0})")]
    ExitedBeforeReady(String),
    #[error("the supervisor is stopping")]
    Stopping,
}

/// The answer to a command.
pub type Outcome = Result<Done, Refused>;

/// Where the answer to a command comes.
#[derive(Debug)]
pub struct Ticket(pub(super) oneshot::Receiver<Outcome>);

impl std::future::Future for Ticket {
    type Output = Outcome;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Outcome> {
        // A task that has ended dropped the reply: it is stopping.
        std::pin::Pin::new(&mut self.0)
            .poll(cx)
            .map(|answer| answer.unwrap_or(Err(Refused::Stopping)))
    }
}
