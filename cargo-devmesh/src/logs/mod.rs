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

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Colours for service names, in turn.
const COLOURS: [u8; 6] = [36, 33, 35, 32, 34, 31];
/// The name the supervisor's own lines carry.
pub const SUPERVISOR: &str = "devmesh";

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
}

impl Logs {
    /// Logs for `services`, written under `<state_dir>/logs/`. Colour is on
    /// when stdout is a terminal and `NO_COLOR` is not set.
    pub fn new(state_dir: &Path, services: &[String]) -> std::io::Result<Logs> {
        let dir = state_dir.join("logs");
        std::fs::create_dir_all(&dir)?;
        let colour = std::io::stdout().is_terminal()
            && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
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
            }),
        })
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
                writeln!(
                    out,
                    "\x1b[{colour}m{service:>w$} |\x1b[0m {text}",
                    w = inner.width
                )
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
                .open(inner.dir.join(format!("{service}.log")))
                .ok()
                .map(|file| files.entry(service.to_owned()).or_insert(file)),
        };
        if let Some(file) = file {
            let _ = writeln!(file, "{} {text}", timestamp(std::time::SystemTime::now()));
        }
    }

    /// A line from the supervisor itself.
    pub fn note(&self, text: impl AsRef<str>) {
        self.line(SUPERVISOR, text.as_ref());
    }
}
