//! W3C trace context: `traceparent: 00-<trace id>-<parent span id>-<flags>`.

/// A trace id: 128 bits, shown as 32 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId(pub u128);

/// A span id: 64 bits, shown as 16 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId(pub u64);

impl TraceId {
    /// A new random trace id.
    pub fn random() -> TraceId {
        TraceId((u128::from(random()) << 64) | u128::from(random()))
    }

    /// Parses 32 hex digits.
    pub fn parse(hex: &str) -> Option<TraceId> {
        (hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| u128::from_str_radix(hex, 16).ok().map(TraceId))?
    }
}

impl SpanId {
    pub fn random() -> SpanId {
        SpanId(random())
    }
}

impl std::fmt::Display for TraceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl std::fmt::Display for SpanId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl serde::Serialize for TraceId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl serde::Serialize for SpanId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// The trace a request travels in, as the proxy decides it. The proxy
/// always sends the service a `traceparent` of its own span, so a request
/// that had one has it replaced.
#[derive(Debug, Clone, Copy)]
pub struct Trace {
    /// The `traceparent` the service sees: this request's trace, and its
    /// span at the front port.
    pub header: TraceParent,
    /// The span this request was made during: the one its `traceparent`
    /// named, or, without one, the caller's only request in flight.
    pub parent: Option<SpanId>,
    /// Whether `parent` was inferred rather than said by the caller.
    pub inferred: bool,
}

/// A parsed `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: TraceId,
    /// The span that sent the request.
    pub span_id: SpanId,
    pub flags: u8,
}

impl TraceParent {
    /// Parses a `traceparent` value; `None` when it is not version 00 form.
    pub fn parse(value: &str) -> Option<TraceParent> {
        let mut parts = value.trim().split('-');
        let (version, trace_id, span_id, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
        if !(hex(version, 2) && hex(span_id, 16) && hex(flags, 2)) {
            return None;
        }
        let parsed = TraceParent {
            trace_id: TraceId::parse(trace_id)?,
            span_id: SpanId(u64::from_str_radix(span_id, 16).ok()?),
            flags: u8::from_str_radix(flags, 16).ok()?,
        };
        (parsed.trace_id.0 != 0 && parsed.span_id.0 != 0).then_some(parsed)
    }

    /// A request of trace `trace_id` sent by span `span_id`, sampled.
    pub fn new(trace_id: TraceId, span_id: SpanId) -> TraceParent {
        TraceParent {
            trace_id,
            span_id,
            flags: 1,
        }
    }

    /// The header's value, written without the formatter (it is on every request).
    pub fn header(&self) -> [u8; 55] {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
        for i in 0..32 {
            out[3 + i] = HEX[((self.trace_id.0 >> (124 - 4 * i)) & 0xf) as usize];
        }
        for i in 0..16 {
            out[36 + i] = HEX[((self.span_id.0 >> (60 - 4 * i)) & 0xf) as usize];
        }
        out[53] = HEX[usize::from(self.flags >> 4)];
        out[54] = HEX[usize::from(self.flags & 0xf)];
        out
    }
}

/// splitmix64 over a counter per thread, seeded from the clock, the pid and
/// std's per-thread hash keys: ids need to be unique, not secret.
fn random() -> u64 {
    // Each thread has a generator of its own: proxy threads draw ids for
    // every request and would otherwise pass one counter back and forth.
    thread_local! {
        static STATE: std::cell::Cell<u64> = std::cell::Cell::new(seed());
    }
    STATE.with(|state| {
        let mut z = state.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        state.set(z);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)).max(1)
    })
}

/// A seed that differs between processes, threads and times.
fn seed() -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    let thread = {
        use std::hash::{BuildHasher, Hasher};
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(now);
        hasher.finish()
    };
    now ^ (u64::from(std::process::id()) << 32) ^ thread
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
        assert_eq!(parsed.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(parsed.span_id.to_string(), "00f067aa0ba902b7");
        assert_eq!(&parsed.header()[..], value.as_bytes());
        assert_eq!(TraceParent::parse("00-abc-00f067aa0ba902b7-01"), None);
        assert_eq!(
            TraceParent::parse(&format!("00-{}-00f067aa0ba902b7-01", "0".repeat(32))),
            None
        );
    }

    #[test]
    fn new_ids_are_well_formed_and_distinct() {
        let (a, b) = (TraceId::random(), TraceId::random());
        assert_ne!(a, b);
        let header = TraceParent::new(a, SpanId::random()).header();
        assert_eq!(
            TraceParent::parse(std::str::from_utf8(&header).unwrap())
                .unwrap()
                .trace_id,
            a
        );
    }

    #[test]
    fn finds_trace_ids_in_log_lines() {
        let line = "INFO request{trace_id=4bf92f3577b34da6a3ce929d0e0e4736}: placed order 12";
        assert_eq!(find_trace_id(line), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert_eq!(find_trace_id("pid 1234 deadbeef"), None);
        assert_eq!(find_trace_id(&"a".repeat(40)), None);
    }
}
