//! Logs: every service's output, interleaved on the terminal with a coloured
//! name prefix, and kept per service in `<state>/logs/<svc>.log`.
//!
//! A log file line is `<RFC 3339 UTC time> <text>`: fixed-width times sort
//! and compare as strings, which `cargo devmesh logs` relies on to merge
//! services and apply `--since`.
//!
//! This module owns the log files; it never touches processes.

mod follow;
mod time;

pub use follow::{LogsOptions, show};
pub use time::timestamp;

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{IsTerminal, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::broadcast;

/// Colours for service names, in turn.
const COLOURS: [u8; 6] = [36, 33, 35, 32, 34, 31];
/// The name the supervisor's own lines carry.
pub const SUPERVISOR: &str = "devmesh";
/// Lines kept in memory for the inspector page; the files keep them all.
const RECENT_LINES: usize = 10_000;
/// The file, in the log folder, that holds when the newest run started:
/// `cargo devmesh logs` shows that run unless asked for more.
const RUN_STARTED: &str = "run-started";

/// A log line as the inspector shows it.
#[derive(Debug, Clone, Serialize)]
pub struct LogLine {
    /// Rises by one per line, across services.
    pub seq: u64,
    pub service: String,
    pub time: String,
    pub text: String,
    /// A trace id the line mentions, linking it to a request.
    pub trace_id: Option<String>,
}

/// Where log lines go. Cloned into every task that produces them.
#[derive(Debug, Clone)]
pub struct Logs {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    /// Width of the name column, so lines align.
    width: usize,
    colour: bool,
    /// Colour index per service, fixed at start.
    colours: HashMap<String, u8>,
    files: Mutex<HashMap<String, File>>,
    /// One line at a time on the terminal, so lines never interleave mid-line.
    terminal: Mutex<()>,
    /// The newest lines, for the inspector.
    recent: Mutex<VecDeque<LogLine>>,
    /// Each new line, for live views.
    events: broadcast::Sender<LogLine>,
}

impl Logs {
    /// Logs for `services`, written under `<state_dir>/logs/`. Colour is on
    /// when stdout is a terminal and `NO_COLOR` is not set.
    pub fn new(state_dir: &Path, services: &[String]) -> std::io::Result<Logs> {
        let dir = state_dir.join("logs");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(RUN_STARTED), timestamp(std::time::SystemTime::now()))?;
        let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
        let width = services
            .iter()
            .map(String::len)
            .chain([SUPERVISOR.len()])
            .max()
            .unwrap_or(0);
        let colours = services
            .iter()
            .enumerate()
            .map(|(i, name)| (name.clone(), COLOURS[i % COLOURS.len()]))
            .collect();
        Ok(Logs {
            inner: Arc::new(Inner {
                dir,
                width,
                colour,
                colours,
                files: Mutex::default(),
                terminal: Mutex::default(),
                recent: Mutex::default(),
                events: broadcast::channel(1024).0,
            }),
        })
    }

    /// When the newest run in `state_dir` started, as log lines write times.
    pub fn run_started(state_dir: &Path) -> Option<String> {
        let text = std::fs::read_to_string(state_dir.join("logs").join(RUN_STARTED)).ok()?;
        Some(text.trim().to_owned())
    }

    /// The log file of `service`.
    pub fn path(dir: &Path, service: &str) -> PathBuf {
        dir.join("logs").join(format!("{service}.log"))
    }

    /// One line of a service's output (or the supervisor's, as [`SUPERVISOR`]).
    pub fn line(&self, service: &str, text: &str) {
        let inner = &self.inner;
        {
            let _one_at_a_time = inner.terminal.lock().unwrap_or_else(|e| e.into_inner());
            let mut out = std::io::stdout().lock();
            let _ = if inner.colour {
                let colour = inner.colours.get(service).copied().unwrap_or(90);
                writeln!(out, "\x1b[{colour}m{service:>w$} |\x1b[0m {text}", w = inner.width)
            } else {
                writeln!(out, "{service:>w$} | {text}", w = inner.width)
            };
        }
        let mut files = inner.files.lock().unwrap_or_else(|e| e.into_inner());
        let file = match files.get_mut(service) {
            Some(file) => Some(file),
            None => OpenOptions::new()
                .create(true)
                .append(true)
                // Services print secrets too: the owner's alone.
                .mode(0o600)
                .open(inner.dir.join(format!("{service}.log")))
                .ok()
                .map(|file| files.entry(service.to_owned()).or_insert(file)),
        };
        let time = timestamp(std::time::SystemTime::now());
        if let Some(file) = file {
            let _ = writeln!(file, "{time} {text}");
        }
        drop(files);
        let mut recent = inner.recent.lock().unwrap_or_else(|e| e.into_inner());
        let line = LogLine {
            seq: recent.back().map_or(1, |l| l.seq + 1),
            service: service.to_owned(),
            time,
            text: text.to_owned(),
            trace_id: crate::inspector::trace::find_trace_id(text).map(str::to_lowercase),
        };
        if recent.len() == RECENT_LINES {
            recent.pop_front();
        }
        recent.push_back(line.clone());
        let _ = inner.events.send(line);
    }

    /// Recent lines of `services` (all when empty), after `after`, that
    /// mention `trace_id` when given; the newest `limit`.
    pub fn recent(&self, services: &[String], trace_id: Option<&str>, after: u64, limit: usize) -> Vec<LogLine> {
        let recent = self.inner.recent.lock().unwrap_or_else(|e| e.into_inner());
        let mut lines: Vec<LogLine> = recent
            .iter()
            .filter(|l| l.seq > after)
            .filter(|l| services.is_empty() || services.contains(&l.service))
            .filter(|l| trace_id.is_none_or(|t| l.trace_id.as_deref() == Some(t)))
            .cloned()
            .collect();
        if lines.len() > limit {
            lines.drain(..lines.len() - limit);
        }
        lines
    }

    /// New lines as they come.
    pub fn subscribe(&self) -> broadcast::Receiver<LogLine> {
        self.inner.events.subscribe()
    }

    /// A line from the supervisor itself.
    pub fn note(&self, text: impl AsRef<str>) {
        self.line(SUPERVISOR, text.as_ref());
    }
}
