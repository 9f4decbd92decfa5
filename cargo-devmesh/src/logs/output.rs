//! A service's output, read on a thread of its own at a lower priority:
//! a service that prints as fast as it can (`yes`, a debug log level in a
//! loop) once took the supervisor's only runtime thread, and `ps` took
//! 15 s, a restart 136 s. Lines are read in batches, kept up to a rate per
//! service (a token bucket of `[logs] rate` lines a second, with a burst of
//! as many), and the rest are dropped and counted in a note, once a second
//! while it lasts: the lines shown are never behind what the service
//! prints. A service waits on the supervisor only when it writes more than
//! 64 KiB a millisecond (see [`FLOOD_PAUSE`]).

use std::io::{self, Read};
use std::time::{Duration, Instant};

use super::Logs;

/// Bytes read at once; a line longer than this is cut in pieces.
const BATCH: usize = 64 * 1024;
/// The pause after each batch while lines are dropped.
const FLOOD_PAUSE: Duration = Duration::from_millis(1);
/// How often a flood's count of dropped lines is said while it lasts.
const SAY_DROPPED_EVERY: Duration = Duration::from_secs(1);

/// Reads `output` on a thread of its own until it closes, each line to
/// `logs` as `service`'s.
pub fn follow(output: impl Read + Send + 'static, service: &str, logs: &Logs) -> io::Result<()> {
    let (service, logs) = (service.to_owned(), logs.clone());
    std::thread::Builder::new()
        .name(format!("devmesh-log-{service}"))
        .spawn(move || {
            crate::platform::lower_this_threads_priority();
            read_lines(output, &service, &logs);
        })?;
    Ok(())
}

fn read_lines(mut output: impl Read, service: &str, logs: &Logs) {
    let rate = logs.inner.limits.rate.max(1);
    let mut budget = Budget::new(rate);
    let mut buffer = vec![0u8; BATCH];
    let mut filled = 0;
    loop {
        let read = match output.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        filled += read;
        let whole = match buffer[..filled].iter().rposition(|&b| b == b'\n') {
            Some(at) => at + 1,
            // No end of line in a full buffer: the line so far, as one.
            None if filled == buffer.len() => filled,
            None => continue,
        };
        keep(&buffer[..whole], service, logs, &mut budget);
        buffer.copy_within(whole..filled, 0);
        filled -= whole;
        // Past the budget, a pause before the next read: the pipe (64 KiB)
        // fills meanwhile, so a writer at `yes` speed is held to 64 MB/s,
        // far above any rate kept, and the reader takes one read a pause
        // instead of one for each of the writer's (70% of a core without
        // it, measured with bench/flood). A service that writes less than
        // the pipe holds a millisecond never waits.
        if budget.dropped > 0 {
            std::thread::sleep(FLOOD_PAUSE);
        }
    }
    if filled > 0 {
        keep(&buffer[..filled], service, logs, &mut budget);
    }
    budget.say_dropped(service, logs, true);
}

/// Hands the lines of `bytes` to `logs` in one batch, within `budget`.
/// Lines past it are only counted, which is a vectorised byte count: a
/// flood costs the reader its reads, not a decode of every line.
fn keep(bytes: &[u8], service: &str, logs: &Logs, budget: &mut Budget) {
    budget.refill();
    let mut lines = Vec::new();
    // What is left of the batch: lines, separated by `\n`.
    let mut rest = Some(bytes.strip_suffix(b"\n").unwrap_or(bytes));
    while let Some(left) = rest
        && budget.take()
    {
        let (line, after) = match left.iter().position(|&b| b == b'\n') {
            Some(end) => (&left[..end], Some(&left[end + 1..])),
            None => (left, None),
        };
        lines.push(String::from_utf8_lossy(line.strip_suffix(b"\r").unwrap_or(line)));
        rest = after;
    }
    if let Some(left) = rest {
        budget.dropped += left.iter().filter(|&&b| b == b'\n').count() as u64 + 1;
    }
    // A note of what was dropped goes before the lines kept after it.
    budget.say_dropped(service, logs, !lines.is_empty());
    let lines: Vec<&str> = lines.iter().map(|line| line.as_ref()).collect();
    logs.lines(service, &lines);
}

/// A token bucket of lines.
struct Budget {
    rate: u32,
    tokens: f64,
    refilled: Instant,
    /// Lines dropped since the last note, and when dropping began.
    dropped: u64,
    since: Instant,
}

impl Budget {
    fn new(rate: u32) -> Budget {
        let now = Instant::now();
        Budget {
            rate,
            tokens: f64::from(rate),
            refilled: now,
            dropped: 0,
            since: now,
        }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let earned = now.duration_since(self.refilled).as_secs_f64() * f64::from(self.rate);
        self.tokens = (self.tokens + earned).min(f64::from(self.rate));
        self.refilled = now;
    }

    fn take(&mut self) -> bool {
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }

    /// Says how many lines were dropped: when `now`, or once a second.
    fn say_dropped(&mut self, service: &str, logs: &Logs, now: bool) {
        if self.dropped == 0 {
            self.since = Instant::now();
            return;
        }
        let over = self.since.elapsed();
        if !now && over < SAY_DROPPED_EVERY {
            return;
        }
        logs.note(format!(
            "{service}: {} lines dropped in {:.1} s, past [logs] rate = {} lines a second",
            self.dropped,
            over.as_secs_f64(),
            self.rate
        ));
        self.dropped = 0;
        self.since = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_kept_to_the_rate_and_the_rest_counted() {
        let dir = tempfile::tempdir().unwrap();
        let mut limits = devmesh::config::LogsConfig::default();
        limits.rate = 1000;
        let logs = Logs::new(dir.path(), &["yes".to_owned()], limits, super::super::Echo::Off).unwrap();
        // 100,000 lines at once: a burst of 1,000 is kept.
        let flood = "y\n".repeat(100_000) + "last words";
        let began = Instant::now();
        read_lines(flood.as_bytes(), "yes", &logs);
        // The bucket earns 1,000 a second while the flood is read.
        let earned = (began.elapsed().as_secs_f64() * 1000.0).ceil() as usize;
        let kept = logs.recent(&["yes".to_owned()], None, 0, usize::MAX);
        assert!(
            (1000..=1001 + earned).contains(&kept.len()),
            "{} (earned {earned})",
            kept.len()
        );
        // The last line may be kept too: the bucket earns during the reads.
        assert!(
            kept.iter().all(|l| l.text == "y" || l.text == "last words"),
            "whole lines, no newline"
        );
        let notes = logs.recent(&[super::super::SUPERVISOR.to_owned()], None, 0, usize::MAX);
        let dropped: u64 = notes
            .iter()
            .filter_map(|l| l.text.strip_prefix("yes: ")?.split(' ').next()?.parse::<u64>().ok())
            .sum();
        assert_eq!(kept.len() as u64 + dropped, 100_001, "{notes:?}");
        assert!(notes[0].text.contains("rate = 1000"), "{notes:?}");
    }

    #[test]
    fn lines_are_whole_across_reads_and_a_last_line_without_newline_counts() {
        let dir = tempfile::tempdir().unwrap();
        let logs = Logs::new(
            dir.path(),
            &[],
            devmesh::config::LogsConfig::default(),
            super::super::Echo::Off,
        )
        .unwrap();
        // One byte a read: lines still come whole.
        struct Trickle<'a>(&'a [u8]);
        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let Some((&first, rest)) = self.0.split_first() else {
                    return Ok(0);
                };
                buf[0] = first;
                self.0 = rest;
                Ok(1)
            }
        }
        read_lines(Trickle(b"one\r\ntwo\nthree"), "svc", &logs);
        let texts: Vec<_> = logs.recent(&[], None, 0, 10).into_iter().map(|l| l.text).collect();
        assert_eq!(texts, ["one", "two", "three"]);
    }
}
