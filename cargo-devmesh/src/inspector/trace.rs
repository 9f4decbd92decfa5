//! W3C trace context: `traceparent: 00-<trace id>-<parent span id>-<flags>`.

use std::sync::atomic::{AtomicU64, Ordering};

/// A parsed `traceparent`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceParent {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// 16 lowercase hex digits: the span that sent the request.
    pub span_id: String,
    pub flags: String,
}

impl TraceParent {
    /// Parses a `traceparent` value; `None` when it is not version 00 form.
    pub fn parse(value: &str) -> Option<TraceParent> {
        let mut parts = value.trim().split('-');
        let (version, trace_id, span_id, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
        let valid = hex(version, 2)
            && hex(trace_id, 32)
            && hex(span_id, 16)
            && hex(flags, 2)
            && trace_id != "0".repeat(32)
            && span_id != "0".repeat(16);
        valid.then(|| TraceParent {
            trace_id: trace_id.to_ascii_lowercase(),
            span_id: span_id.to_ascii_lowercase(),
            flags: flags.to_owned(),
        })
    }

    /// A child of `trace_id` sent by span `span_id`, sampled.
    pub fn new(trace_id: String, span_id: String) -> TraceParent {
        TraceParent {
            trace_id,
            span_id,
            flags: "01".to_owned(),
        }
    }

    pub fn header(&self) -> String {
        format!("00-{}-{}-{}", self.trace_id, self.span_id, self.flags)
    }
}

/// A new random trace id.
pub fn new_trace_id() -> String {
    format!("{:016x}{:016x}", random(), random())
}

/// A new random span id.
pub fn new_span_id() -> String {
    format!("{:016x}", random())
}

/// splitmix64 over a counter seeded once from the clock and pid: ids need
/// to be unique, not secret.
fn random() -> u64 {
    static STATE: std::sync::OnceLock<AtomicU64> = std::sync::OnceLock::new();
    let state = STATE.get_or_init(|| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        AtomicU64::new(now ^ (u64::from(std::process::id()) << 32))
    });
    let mut z = state
        .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)).max(1)
}

/// The first 32-hex-digit run in a log line, which is how a trace id shows
/// up in `tracing` output and in logs that print a `traceparent`.
pub fn find_trace_id(text: &str) -> Option<&str> {
    let bytes = text.as_bytes();
    let mut start = 0;
    while start < bytes.len() {
        let run = bytes[start..].iter().take_while(|b| b.is_ascii_hexdigit()).count();
        if run == 32 {
            return Some(&text[start..start + 32]);
        }
        start += run.max(1);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_writes_traceparent() {
        let value = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parsed = TraceParent::parse(value).unwrap();
        assert_eq!(parsed.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(parsed.header(), value);
        assert_eq!(TraceParent::parse("00-abc-00f067aa0ba902b7-01"), None);
        assert_eq!(
            TraceParent::parse(&format!("00-{}-00f067aa0ba902b7-01", "0".repeat(32))),
            None
        );
    }

    #[test]
    fn new_ids_are_well_formed_and_distinct() {
        let (a, b) = (new_trace_id(), new_trace_id());
        assert_ne!(a, b);
        assert!(TraceParent::parse(&TraceParent::new(a, new_span_id()).header()).is_some());
    }

    #[test]
    fn finds_trace_ids_in_log_lines() {
        let line = "INFO request{trace_id=4bf92f3577b34da6a3ce929d0e0e4736}: placed order 12";
        assert_eq!(find_trace_id(line), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert_eq!(find_trace_id("pid 1234 deadbeef"), None);
        assert_eq!(find_trace_id(&"a".repeat(40)), None);
    }
}
