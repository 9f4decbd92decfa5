//! A day of use in half an hour, two ways:
//!
//! - `soak shop`: the shop under `cargo devmesh run --watch` with 8
//!   keep-alive clients, a WebSocket and a `traffic -f` follower attached
//!   throughout, while a random service is restarted every 10 s, one is
//!   killed with SIGKILL every 60 s and `--watch` rebuilds one every 5
//!   minutes;
//! - `soak relay`: one relay under 200 tunnels whose supervisors connect,
//!   serve and are killed with SIGKILL at random, garbage connections mixed
//!   in, every live tunnel asked again and again.
//!
//! Each prints its figures every minute and, at the end, every failure
//! beside the event that explains it, the targets held or missed, and
//! whether any process outlived the end.
//!
//! Run: `cargo run --release -p devmesh-bench --bin soak -- shop|relay
//! [--minutes N] [--tunnels N]` (30 minutes and 200 tunnels unless told;
//! needs `nginx` for the relay's: `apt-get install nginx-light`).

mod relay;
mod shop;

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

const USAGE: &str = "usage: soak shop|relay [--minutes N] [--tunnels N]";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((what, flags)) = args.split_first() else {
        panic!("{USAGE}")
    };
    if what == shop::WS_ECHO {
        return shop::ws_echo();
    }
    let (mut minutes, mut tunnels) = (30, 200);
    for pair in flags.chunks(2) {
        let value = || {
            pair.get(1)
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{USAGE}"))
        };
        match pair[0].as_str() {
            "--minutes" => minutes = value(),
            "--tunnels" => tunnels = value(),
            _ => panic!("{USAGE}"),
        }
    }
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    match what.as_str() {
        "shop" => runtime.block_on(shop::soak(minutes)),
        "relay" => runtime.block_on(relay::soak(minutes, tunnels)),
        _ => panic!("{USAGE}"),
    }
}

/// What happened, when (since the start), for the report.
#[derive(Debug, Clone)]
struct Event {
    at: Duration,
    what: String,
}

/// Events (what the soak did) and failures (what it saw go wrong) as they
/// happen, stamped from one start.
#[derive(Debug)]
struct Journal {
    began: Instant,
    events: Mutex<Vec<Event>>,
    failures: Mutex<Vec<Event>>,
    /// Events are printed as they happen.
    loud: bool,
}

impl Journal {
    fn new(loud: bool) -> Journal {
        Journal {
            began: Instant::now(),
            events: Mutex::default(),
            failures: Mutex::default(),
            loud,
        }
    }

    fn event(&self, what: String) {
        if self.loud {
            println!("  {:>7.1?}  {what}", self.began.elapsed());
        }
        self.events.lock().expect("journal").push(Event {
            at: self.began.elapsed(),
            what,
        });
    }

    fn failure(&self, what: String) {
        self.failures.lock().expect("journal").push(Event {
            at: self.began.elapsed(),
            what,
        });
    }

    fn count(&self, prefix: &str) -> usize {
        let events = self.events.lock().expect("journal");
        events.iter().filter(|e| e.what.starts_with(prefix)).count()
    }

    /// The event closest before `at` (within 5 s) whose text holds
    /// `about`: what explains a failure there, if anything does.
    fn cause_of(&self, at: Duration, about: &str) -> Option<Event> {
        let events = self.events.lock().expect("journal");
        events
            .iter()
            .rev()
            .filter(|e| e.what.contains(about))
            .find(|e| e.at <= at + Duration::from_millis(50) && at.saturating_sub(e.at) <= Duration::from_secs(5))
            .cloned()
    }

    /// Prints every failure (at most `limit`, then a count) beside the
    /// event before it that `about` picks out; the failures `counts` picks.
    fn print_failures(&self, limit: usize, about: impl Fn(&str) -> String, counts: impl Fn(&str) -> bool) -> usize {
        let failures = self.failures.lock().expect("journal");
        if !failures.is_empty() {
            println!("\nfailures and ends, each beside the event before it:");
        }
        for failure in failures.iter().take(limit) {
            let cause = self.cause_of(failure.at, &about(&failure.what));
            println!(
                "  {:>7.1?}  {}\n           after: {}",
                failure.at,
                failure.what,
                cause.map_or("nothing within 5 s".to_owned(), |c| format!(
                    "{} ({:.1?} before)",
                    c.what,
                    failure.at.saturating_sub(c.at)
                ))
            );
        }
        if failures.len() > limit {
            println!("  … and {} more", failures.len() - limit);
        }
        failures.iter().filter(|f| counts(&f.what)).count()
    }
}

/// Memory and descriptors count as flat from this minute on.
const SETTLED_MINUTE: usize = 5;
/// How far they may move once settled: (highest − lowest) / lowest.
const FLAT: f64 = 0.10;

/// Prints whether `what`, sampled once a minute, stayed flat once settled.
fn print_flat(what: &str, per_minute: &[f64]) {
    let settled = per_minute.get(SETTLED_MINUTE..).unwrap_or_default();
    if settled.is_empty() {
        return println!("  {what} flat after minute {SETTLED_MINUTE}: not measured (the run was shorter)");
    }
    let (low, high) = settled
        .iter()
        .fold((f64::MAX, f64::MIN), |(l, h), v| (l.min(*v), h.max(*v)));
    let spread = (high - low) / low.max(1.0);
    println!(
        "  {what} flat after minute {SETTLED_MINUTE}, within {:.0}%: {} ({low:.0} to {high:.0}, {:.1}%)",
        FLAT * 100.0,
        devmesh_bench::verdict(spread <= FLAT),
        spread * 100.0
    );
}

fn ticks_to_ms(ticks: u64) -> f64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks as f64 * 1000.0 / per_second
}

/// xorshift64*, seeded from the clock and printed, so that a run's choices
/// can be told apart (not replayed: the mesh's timing is not).
#[derive(Debug)]
struct Random(u64);

impl Random {
    fn seeded() -> Random {
        let seed = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1;
        println!("(random choices seeded with {seed})");
        Random(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() >> 33) as usize % n
    }

    /// A duration from `low` up to `high`.
    fn between(&mut self, low: Duration, high: Duration) -> Duration {
        let span = (high - low).as_millis().max(1) as u64;
        low + Duration::from_millis(self.next() % span)
    }
}
