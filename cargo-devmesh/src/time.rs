//! RFC 3339 UTC timestamps with milliseconds, without a date crate; and
//! a watch on the wall clock, which only timestamps read: every duration
//! devmesh measures (timeouts, restarts, leases, rates) is on the
//! monotonic clock.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;

/// How often the wall clock is compared with the monotonic one.
const CLOCK_TICK: Duration = Duration::from_secs(1);
/// A difference between the two past this is a jump, not drift.
const CLOCK_JUMP: Duration = Duration::from_secs(2);

/// The wall clock moved by this much more than time passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jump {
    Forward(Duration),
    Back(Duration),
}

impl Jump {
    /// Between two readings of the wall clock, `passed` apart on the
    /// monotonic one.
    pub fn between(before: SystemTime, after: SystemTime, passed: Duration) -> Option<Jump> {
        let jump = match after.duration_since(before) {
            Ok(moved) => Jump::Forward(moved.checked_sub(passed)?),
            Err(back) => Jump::Back(back.duration() + passed),
        };
        let (Jump::Forward(by) | Jump::Back(by)) = jump;
        (by > CLOCK_JUMP).then_some(jump)
    }
}

impl std::fmt::Display for Jump {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (way, by) = match self {
            Jump::Forward(by) => ("forward", by),
            Jump::Back(by) => ("back", by),
        };
        // Measured once a second: past a minute, to the nearest minute.
        let secs = match by.as_secs() {
            secs if secs >= 60 => (secs + 30) / 60 * 60,
            secs => secs,
        };
        let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
        write!(f, "the system clock jumped {way} by ")?;
        match (h, m) {
            (0, 0) => write!(f, "{s} s")?,
            (0, _) => write!(f, "{m} min {s} s")?,
            _ => write!(f, "{h} h {m} min")?,
        }
        write!(
            f,
            " (a sleep, or the time set): the times of exchanges and log lines before it and after it do not compare; \
             nothing else depends on the clock"
        )
    }
}

/// Says each jump of the wall clock, once, with `say`, until `shutdown`.
pub async fn watch_clock(say: impl Fn(String), shutdown: CancellationToken) {
    let (mut wall, mut monotonic) = (SystemTime::now(), Instant::now());
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(CLOCK_TICK) => {}
        }
        let (now, now_monotonic) = (SystemTime::now(), Instant::now());
        if let Some(jump) = Jump::between(wall, now, now_monotonic - monotonic) {
            say(jump.to_string());
        }
        (wall, monotonic) = (now, now_monotonic);
    }
}

/// Milliseconds since the Unix epoch, now: how exchanges record when they began.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `2026-11-28T01:02:03.456Z`: always 24 characters, so they sort as text.
pub fn timestamp(at: SystemTime) -> String {
    let since_epoch = at.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = since_epoch.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since_epoch.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day), by Howard Hinnant's
/// `civil_from_days` algorithm.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jump_is_the_clock_moving_more_than_time_passed() {
        let (at, second) = (UNIX_EPOCH + Duration::from_secs(1_000_000), Duration::from_secs(1));
        assert_eq!(Jump::between(at, at + second, second), None);
        // Drift and a slow tick are no jump.
        assert_eq!(Jump::between(at, at + second * 2, second), None);
        assert_eq!(Jump::between(at, at, second), None);
        assert_eq!(
            Jump::between(at, at + Duration::from_secs(3601), second),
            Some(Jump::Forward(Duration::from_secs(3600)))
        );
        assert_eq!(
            Jump::between(at, at - Duration::from_secs(7199), second),
            Some(Jump::Back(Duration::from_secs(7200)))
        );
        let said = Jump::Back(Duration::from_secs(7200)).to_string();
        assert!(
            said.starts_with("the system clock jumped back by 2 h 0 min (a sleep"),
            "{said}"
        );
        assert!(
            Jump::Forward(Duration::from_secs(75))
                .to_string()
                .starts_with("the system clock jumped forward by 1 min 0 s ")
        );
        assert!(
            Jump::Forward(Duration::from_secs(74 * 3600 - 1))
                .to_string()
                .contains(" by 74 h 0 min ")
        );
    }

    #[test]
    fn formats_known_instants() {
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap_day = UNIX_EPOCH + Duration::from_millis(951_782_400_123);
        assert_eq!(timestamp(leap_day), "2000-02-29T00:00:00.123Z");
        let later = UNIX_EPOCH + Duration::from_secs(1_795_825_845);
        assert_eq!(timestamp(later), "2026-11-28T00:30:45.000Z");
    }
}
