//! Logs: every service's output, interleaved on the terminal with a coloured
//! name prefix, and kept per service in `<state>/logs/<svc>.log`.
//!
//! A log file line is `<RFC 3339 UTC time> <text>`: fixed-width times sort
//! and compare as strings, which `cargo devmesh logs` relies on to merge
//! services and apply `--since`.
//!
//! Each file is rotated at `logs.max_size` (`<svc>.log.1` the newest of
//! `logs.keep` rotated ones), and a file that cannot be written is said
//! once on the terminal, whose lines go on.
//!
//! This module owns the log files; it never touches processes.

mod follow;
mod output;

pub use crate::time::timestamp;
pub use follow::{LogsOptions, show};
pub use output::follow as follow_output;

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{IsTerminal, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use devmesh::config::LogsConfig;
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

/// The open log files, and what could not be written.
#[derive(Debug, Default)]
struct Files {
    open: HashMap<String, LogFile>,
    /// Services whose file failed, and how. One cause (a full disk) fails
    /// every file: it is said once, not once a service.
    failed: HashMap<String, std::io::ErrorKind>,
}

#[derive(Debug)]
struct LogFile {
    file: File,
    /// Bytes in the file, for rotation.
    size: u64,
}

impl Files {
    /// Appends lines to `service`'s file in one write, rotating it past the
    /// size limit; what to tell the terminal when files begin to fail for a
    /// cause not yet said, or work again.
    fn write(&mut self, dir: &Path, service: &str, time: &str, texts: &[&str], limits: &LogsConfig) -> Option<String> {
        let path = dir.join(format!("{service}.log"));
        match self.append(&path, service, time, texts, limits) {
            Ok(()) => {
                let kind = self.failed.remove(service)?;
                // Whatever stopped this file has gone for the others too;
                // a file that still fails says so again.
                self.failed.retain(|_, k| *k != kind);
                Some(format!(
                    "the logs in `{}` are written again (lines shown meanwhile are not in them)",
                    dir.display()
                ))
            }
            Err(e) => {
                self.open.remove(service);
                let said = self.failed.values().any(|k| *k == e.kind());
                let first = self.failed.insert(service.to_owned(), e.kind()).is_none();
                (first && !said).then(|| {
                    format!(
                        "could not write `{}`: {e}; lines show here only until the logs can be written",
                        path.display()
                    )
                })
            }
        }
    }

    fn append(
        &mut self,
        path: &Path,
        service: &str,
        time: &str,
        texts: &[&str],
        limits: &LogsConfig,
    ) -> std::io::Result<()> {
        if !self.open.contains_key(service) {
            let file = open_log(path)?;
            let size = file.metadata()?.len();
            self.open.insert(service.to_owned(), LogFile { file, size });
        }
        let log = self.open.get_mut(service).expect("opened above");
        let mut batch = String::with_capacity(texts.iter().map(|t| time.len() + t.len() + 2).sum());
        for text in texts {
            batch.push_str(time);
            batch.push(' ');
            batch.push_str(text);
            batch.push('\n');
        }
        log.file.write_all(batch.as_bytes())?;
        log.size += batch.len() as u64;
        if log.size >= limits.max_size {
            self.open.remove(service);
            rotate(path, limits.keep)?;
        }
        Ok(())
    }
}

fn open_log(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        // Services print secrets too: the owner's alone.
        .mode(0o600)
        .open(path)
}

/// `<svc>.log` becomes `<svc>.log.1`, `.1` becomes `.2`, and so on; the
/// oldest beyond `keep` goes.
fn rotate(path: &Path, keep: usize) -> std::io::Result<()> {
    let numbered = |n: usize| {
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    };
    if keep == 0 {
        return std::fs::remove_file(path);
    }
    for n in (1..keep).rev() {
        match std::fs::rename(numbered(n), numbered(n + 1)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    std::fs::rename(path, numbered(1))
}

/// Where log lines go besides the files and the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Echo {
    /// Interleaved on stdout, one line at a time, coloured on a terminal
    /// unless `NO_COLOR` is set: `cargo devmesh run`.
    Terminal,
    /// Nowhere else: a mesh in a test.
    Off,
}

/// Where log lines go. Cloned into every task that produces them.
#[derive(Debug, Clone)]
pub struct Logs {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    echo: Echo,
    /// Width of the name column, so lines align.
    width: usize,
    colour: bool,
    /// Colour index per service, fixed at start.
    colours: HashMap<String, u8>,
    limits: LogsConfig,
    files: Mutex<Files>,
    /// One line at a time on the terminal, so lines never interleave mid-line.
    terminal: Mutex<()>,
    /// The newest lines, for the inspector.
    recent: Mutex<VecDeque<LogLine>>,
    /// Each new line, for live views.
    events: broadcast::Sender<LogLine>,
}

impl Logs {
    /// Logs for `services`, written under `<state_dir>/logs/` within
    /// `limits`, and to `echo`.
    pub fn new(state_dir: &Path, services: &[String], limits: LogsConfig, echo: Echo) -> std::io::Result<Logs> {
        let dir = state_dir.join("logs");
        crate::secret::private_dir(&dir)?;
        crate::secret::write_private(
            &dir.join(RUN_STARTED),
            timestamp(std::time::SystemTime::now()).as_bytes(),
        )?;
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
                echo,
                width,
                colour,
                colours,
                limits,
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

    /// The folder of the log files.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Opens every log file anew (in a new folder, when the old one went),
    /// so that no line goes to a deleted file.
    pub fn reopen(&self) {
        let _ = crate::secret::private_dir(&self.inner.dir);
        self.inner.files.lock().unwrap_or_else(|e| e.into_inner()).open.clear();
    }

    /// The log file of `service`.
    pub fn path(dir: &Path, service: &str) -> PathBuf {
        dir.join("logs").join(format!("{service}.log"))
    }

    /// One line of a service's output (or the supervisor's, as [`SUPERVISOR`]).
    pub fn line(&self, service: &str, text: &str) {
        self.lines(service, &[text]);
    }

    /// Lines of one service's output, as one batch: one write to the
    /// terminal and one to the file, however many lines.
    pub fn lines(&self, service: &str, texts: &[&str]) {
        if texts.is_empty() {
            return;
        }
        let inner = &self.inner;
        if inner.echo == Echo::Terminal {
            let (w, colour) = (inner.width, inner.colours.get(service).copied().unwrap_or(90));
            use std::fmt::Write as _;
            let mut out = String::with_capacity(texts.iter().map(|t| t.len() + w + 16).sum());
            for text in texts {
                let _ = if inner.colour {
                    writeln!(out, "\x1b[{colour}m{service:>w$} |\x1b[0m {text}")
                } else {
                    writeln!(out, "{service:>w$} | {text}")
                };
            }
            let _one_at_a_time = inner.terminal.lock().unwrap_or_else(|e| e.into_inner());
            let _ = std::io::stdout().lock().write_all(out.as_bytes());
        }
        let time = timestamp(std::time::SystemTime::now());
        let trouble = {
            let mut files = inner.files.lock().unwrap_or_else(|e| e.into_inner());
            files.write(&inner.dir, service, &time, texts, &inner.limits)
        };
        if let Some(trouble) = trouble
            && inner.echo == Echo::Terminal
        {
            let _one_at_a_time = inner.terminal.lock().unwrap_or_else(|e| e.into_inner());
            let _ = writeln!(
                std::io::stdout().lock(),
                "{SUPERVISOR:>w$} | {trouble}",
                w = inner.width
            );
        }
        let mut recent = inner.recent.lock().unwrap_or_else(|e| e.into_inner());
        for text in texts {
            let line = LogLine {
                seq: recent.back().map_or(1, |l| l.seq + 1),
                service: service.to_owned(),
                time: time.clone(),
                text: (*text).to_owned(),
                trace_id: crate::inspector::trace::find_trace_id(text).map(str::to_lowercase),
            };
            if recent.len() == RECENT_LINES {
                recent.pop_front();
            }
            recent.push_back(line.clone());
            let _ = inner.events.send(line);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_size: u64, keep: usize) -> LogsConfig {
        let mut limits = LogsConfig::default();
        (limits.max_size, limits.keep) = (max_size, keep);
        limits
    }

    #[test]
    fn a_file_is_rotated_at_its_size_and_a_few_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = Files::default();
        // 52 bytes a line: a rotation every 20 lines; 90 leave 10 in the file.
        for i in 0..90 {
            let text = format!("line {i:03} {}", "x".repeat(40));
            assert_eq!(files.write(dir.path(), "svc", "T", &[&text], &limits(1000, 2)), None);
        }
        let size = |name: &str| std::fs::metadata(dir.path().join(name)).map(|m| m.len());
        for name in ["svc.log", "svc.log.1", "svc.log.2"] {
            assert!(size(name).unwrap() < 1000 + 60, "{name}");
        }
        assert!(size("svc.log.3").is_err(), "only two rotated files are kept");
        let newest = std::fs::read_to_string(dir.path().join("svc.log")).unwrap();
        let rotated = std::fs::read_to_string(dir.path().join("svc.log.1")).unwrap();
        assert!(newest.contains("line 089") && !rotated.contains("line 089"));
        assert!(
            rotated.lines().last() < newest.lines().next(),
            "`.1` holds the lines just before"
        );
    }

    #[test]
    fn files_that_cannot_be_written_for_one_cause_are_said_once_and_their_healing_too() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = Files::default();
        let write = |files: &mut Files, service: &str, text: &str| {
            files.write(dir.path(), service, "T", &[text], &limits(1 << 20, 1))
        };
        // Folders where the files should be: no one, root included, can open them.
        for service in ["a", "b"] {
            std::fs::create_dir(dir.path().join(format!("{service}.log"))).unwrap();
        }
        let first = write(&mut files, "a", "one");
        assert!(first.is_some_and(|m| m.contains("a.log") && m.contains("show here only")));
        assert_eq!(write(&mut files, "a", "two"), None, "said once a file");
        assert_eq!(write(&mut files, "b", "one"), None, "and once a cause");
        for service in ["a", "b"] {
            std::fs::remove_dir(dir.path().join(format!("{service}.log"))).unwrap();
        }
        let healed = write(&mut files, "a", "three");
        assert!(healed.is_some_and(|m| m.contains("written again")));
        assert_eq!(write(&mut files, "b", "two"), None, "healing is said once too");
        assert_eq!(write(&mut files, "a", "four"), None);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("a.log")).unwrap(),
            "T three\nT four\n"
        );
    }
}
