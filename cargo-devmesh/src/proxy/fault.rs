//! Faults a front port puts between callers and its service, set while
//! the mesh runs (the test harness's `mesh.fault(…)`): so that a caller's
//! retries and timeouts are tried against a dependency that is slow,
//! failing, dropping connections or gone, without changing its code.
//!
//! Shares are spread evenly, not drawn at random: a share of 0.25 fails
//! exactly every fourth request, so a test's counts are exact.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hyper::StatusCode;
use tokio::sync::watch;

/// The faults on one front port; none by default.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Faults {
    /// Every request (every connection, for TCP) waits this long first.
    pub latency: Option<Duration>,
    /// This share of requests, from 0 to 1, is answered with this status
    /// by the front port; the service never sees them.
    pub errors: Option<(f64, StatusCode)>,
    /// This share of requests has its connection closed, with no answer.
    pub drops: Option<f64>,
    /// Every connection is reset as soon as it comes, like a port nothing
    /// listens on.
    pub unreachable: bool,
}

impl Faults {
    pub fn is_empty(&self) -> bool {
        *self == Faults::default()
    }
}

/// What a front port does with a request, by its faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    /// Sends it on (after the latency, if any).
    Forward,
    /// Answers it with this status itself.
    Answer(StatusCode),
    /// Closes its connection with no answer.
    Drop,
    /// Resets its connection.
    Reset,
}

/// A front port's faults as its proxy threads read them; cheap to clone.
#[derive(Debug, Clone)]
pub struct FaultState {
    faults: watch::Receiver<Faults>,
    errors: Arc<Spread>,
    drops: Arc<Spread>,
}

/// Sets a front port's faults.
#[derive(Debug)]
pub struct FaultSetter {
    faults: watch::Sender<Faults>,
    errors: Arc<Spread>,
    drops: Arc<Spread>,
}

impl FaultSetter {
    /// Sets `faults`; shares count from the next request on (a quarter:
    /// the 4th, 8th, … after this).
    pub fn set(&self, faults: Faults) {
        self.errors.0.store(0, Ordering::Relaxed);
        self.drops.0.store(0, Ordering::Relaxed);
        self.faults.send_replace(faults);
    }
}

impl FaultState {
    /// The faults of a front port, and the handle that sets them.
    pub fn new() -> (FaultSetter, FaultState) {
        let (set, faults) = watch::channel(Faults::default());
        let (errors, drops) = (Arc::<Spread>::default(), Arc::<Spread>::default());
        let setter = FaultSetter {
            faults: set,
            errors: Arc::clone(&errors),
            drops: Arc::clone(&drops),
        };
        (setter, FaultState { faults, errors, drops })
    }

    /// Whether connections are reset as they come.
    pub fn unreachable(&self) -> bool {
        self.faults.borrow().unreachable
    }

    /// The latency to wait, and what to do with the request after it.
    pub fn next(&self) -> (Option<Duration>, Act) {
        let faults = self.faults.borrow();
        if faults.is_empty() {
            return (None, Act::Forward);
        }
        let act = if faults.unreachable {
            Act::Reset
        } else if faults.drops.is_some_and(|share| self.drops.next(share)) {
            Act::Drop
        } else {
            match faults.errors {
                Some((share, status)) if self.errors.next(share) => Act::Answer(status),
                _ => Act::Forward,
            }
        };
        (faults.latency, act)
    }

    /// What a request answered by a fault is told, and what the inspector
    /// shows.
    pub fn message(&self, service: &str) -> String {
        format!("devmesh: a fault set on `{service}`'s front port answered this, not the service\n")
    }
}

/// Spreads a share evenly over requests: the n-th fails when n × share
/// passes a whole number (a quarter: the 4th, 8th, …).
#[derive(Debug, Default)]
struct Spread(AtomicU64);

impl Spread {
    fn next(&self, share: f64) -> bool {
        // A hair over, so that 3 × (1/3) is a whole.
        const HAIR: f64 = 1e-9;
        let share = share.clamp(0.0, 1.0);
        let n = self.0.fetch_add(1, Ordering::Relaxed) as f64;
        ((n + 1.0) * share + HAIR).floor() > (n * share + HAIR).floor()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_spread_exactly() {
        let spread = Spread::default();
        let failed: Vec<bool> = (0..8).map(|_| spread.next(0.25)).collect();
        assert_eq!(failed, [false, false, false, true, false, false, false, true]);
        let all = Spread::default();
        assert!((0..5).all(|_| all.next(1.0)));
        let none = Spread::default();
        assert!((0..5).all(|_| !none.next(0.0)));
        let third = Spread::default();
        assert_eq!((0..300).filter(|_| third.next(1.0 / 3.0)).count(), 100);
    }

    #[test]
    fn faults_decide_what_happens_to_a_request() {
        let (set, state) = FaultState::new();
        assert_eq!(state.next(), (None, Act::Forward));
        set.set(Faults {
            latency: Some(Duration::from_millis(5)),
            errors: Some((0.5, StatusCode::SERVICE_UNAVAILABLE)),
            ..Faults::default()
        });
        let acts: Vec<Act> = (0..4).map(|_| state.next().1).collect();
        assert_eq!(
            acts,
            [
                Act::Forward,
                Act::Answer(StatusCode::SERVICE_UNAVAILABLE),
                Act::Forward,
                Act::Answer(StatusCode::SERVICE_UNAVAILABLE)
            ]
        );
        assert_eq!(state.next().0, Some(Duration::from_millis(5)));
        // Set again, a share counts from the next request.
        set.set(Faults {
            errors: Some((0.5, StatusCode::SERVICE_UNAVAILABLE)),
            ..Faults::default()
        });
        assert_eq!(state.next().1, Act::Forward);
        assert_eq!(state.next().1, Act::Answer(StatusCode::SERVICE_UNAVAILABLE));
        set.set(Faults {
            drops: Some(1.0),
            ..Faults::default()
        });
        assert_eq!(state.next(), (None, Act::Drop));
        set.set(Faults {
            unreachable: true,
            ..Faults::default()
        });
        assert!(state.unreachable());
        assert_eq!(state.next().1, Act::Reset);
    }
}
