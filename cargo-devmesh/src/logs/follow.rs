//! `cargo devmesh logs`: reads the log files, so it works from any terminal,
//! while `run` goes on or after it ended.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use super::{Logs, timestamp};

/// How often `-f` looks for new lines.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(150);

/// What `cargo devmesh logs` shows.
#[derive(Debug, Clone, Default)]
pub struct LogsOptions {
    /// Services to show (already checked to exist).
    pub services: Vec<String>,
    /// Keep showing new lines until interrupted.
    pub follow: bool,
    /// Only lines newer than this, from any run.
    pub since: Option<Duration>,
    /// Only the last this many lines, from any run.
    pub lines: Option<usize>,
    /// Only lines that mention this trace id (lower-case hex).
    pub trace: Option<String>,
}

/// One service's log file and how far it has been read.
struct Tail {
    /// Its position in the list, carried by each line read.
    index: usize,
    service: String,
    path: PathBuf,
    offset: u64,
    /// A line not yet ended by `\n`, kept for the next read.
    partial: String,
}

/// Prints the logs of `options.services`, merged by time, then follows them
/// with `options.follow` until `shutdown`.
pub async fn show(state_dir: &Path, options: LogsOptions, shutdown: CancellationToken) -> std::io::Result<()> {
    // The current (or last) run's lines, unless asked for older ones.
    let since = match (options.since, options.lines) {
        (Some(ago), _) => Some(timestamp(
            SystemTime::now().checked_sub(ago).unwrap_or(SystemTime::UNIX_EPOCH),
        )),
        (None, Some(_)) => None,
        (None, None) => Logs::run_started(state_dir),
    };
    let mut last = options.lines;
    let width = options.services.iter().map(String::len).max().unwrap_or(0);
    let mut tails: Vec<Tail> = options
        .services
        .iter()
        .enumerate()
        .map(|(index, service)| Tail {
            index,
            service: service.clone(),
            path: Logs::path(state_dir, service),
            offset: 0,
            partial: String::new(),
        })
        .collect();
    // What rotation moved aside comes first, oldest first.
    let mut lines = Vec::new();
    for tail in &tails {
        tail.read_rotated(&mut lines)?;
    }
    loop {
        for tail in &mut tails {
            tail.read_new(&mut lines)?;
        }
        // Stable: lines of one service with the same time keep their order.
        lines.sort_by(|a: &(String, usize, String), b| a.0.cmp(&b.0));
        lines.retain(|(time, _, text)| {
            since.as_ref().is_none_or(|since| time >= since)
                && options.trace.as_deref().is_none_or(|trace| {
                    crate::inspector::trace::find_trace_id(text).is_some_and(|found| found.eq_ignore_ascii_case(trace))
                })
        });
        // `-n` counts back from what is there now; what follows comes whole.
        if let Some(n) = last.take() {
            lines.drain(..lines.len().saturating_sub(n));
        }
        let mut out = std::io::stdout().lock();
        for (_, index, text) in lines.drain(..) {
            writeln!(out, "{:>width$} | {text}", tails[index].service)?;
        }
        out.flush()?;
        drop(out);
        if !options.follow {
            return Ok(());
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(FOLLOW_INTERVAL) => {}
        }
    }
}

impl Tail {
    /// Appends the lines of the rotated files (`<svc>.log.N` … `.1`).
    fn read_rotated(&self, lines: &mut Vec<(String, usize, String)>) -> std::io::Result<()> {
        let numbered = |n: usize| {
            let mut name = self.path.as_os_str().to_owned();
            name.push(format!(".{n}"));
            PathBuf::from(name)
        };
        let count = (1..).take_while(|&n| numbered(n).is_file()).count();
        for n in (1..=count).rev() {
            let text = std::fs::read(numbered(n))?;
            for line in String::from_utf8_lossy(&text).lines() {
                let (time, text) = line.split_once(' ').unwrap_or((line, ""));
                lines.push((time.to_owned(), self.index, text.to_owned()));
            }
        }
        Ok(())
    }

    /// Appends the complete lines written since the last read, as
    /// `(time, index, text)`. A file that shrank was started anew: read it
    /// from the start.
    fn read_new(&mut self, lines: &mut Vec<(String, usize, String)>) -> std::io::Result<()> {
        let mut file = match std::fs::File::open(&self.path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        if file.metadata()?.len() < self.offset {
            self.offset = 0;
            self.partial.clear();
        }
        file.seek(SeekFrom::Start(self.offset))?;
        let mut bytes = Vec::new();
        self.offset += file.read_to_end(&mut bytes)? as u64;
        self.partial.push_str(&String::from_utf8_lossy(&bytes));
        let complete = match self.partial.rfind('\n') {
            Some(end) => self.partial.drain(..=end).collect::<String>(),
            None => return Ok(()),
        };
        for line in complete.lines() {
            let (time, text) = line.split_once(' ').unwrap_or((line, ""));
            lines.push((time.to_owned(), self.index, text.to_owned()));
        }
        Ok(())
    }
}
