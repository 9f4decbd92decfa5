//! One captured exchange: a request and its response, a WebSocket, or a
//! TCP connection, as the inspector keeps and shows it.

use std::sync::Arc;

use hyper::header::HeaderMap;
use serde::Serialize;
use serde::ser::SerializeSeq;

use super::trace::{SpanId, TraceId};

/// What kind of traffic an exchange is. The numbers are its code in the
/// store's records ([`Kind::code`], [`Kind::of_code`]): never reuse one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum Kind {
    Http = 0,
    WebSocket = 1,
    Tcp = 2,
}

impl Kind {
    /// Its code in a record.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The kind a record's code names; `None` for a code no kind has.
    pub fn of_code(code: u8) -> Option<Kind> {
        [Kind::Http, Kind::WebSocket, Kind::Tcp]
            .into_iter()
            .find(|kind| kind.code() == code)
    }
}

/// A captured exchange: what the list shows, and its headers and bodies.
/// It reads as its [`Summary`] (`exchange.status`).
#[derive(Debug, Clone, Serialize)]
pub struct Exchange {
    #[serde(flatten)]
    pub summary: Summary,
    pub version: &'static str,
    pub request_headers: Headers,
    pub request_body: Body,
    pub response_headers: Headers,
    pub response_body: Body,
    /// HTTP/2 trailers (gRPC's status and message travel there).
    pub response_trailers: Headers,
    /// The trace was inferred from the caller's request in flight, not
    /// propagated by the caller.
    pub trace_inferred: bool,
}

impl std::ops::Deref for Exchange {
    type Target = Summary;

    fn deref(&self) -> &Summary {
        &self.summary
    }
}

impl std::ops::DerefMut for Exchange {
    fn deref_mut(&mut self) -> &mut Summary {
        &mut self.summary
    }
}

impl Exchange {
    /// An exchange that began now, from `caller` to `service`, with
    /// nothing captured yet.
    pub fn begun(service: Arc<str>, caller: Arc<str>, kind: Kind) -> Exchange {
        Exchange {
            summary: Summary {
                id: 0,
                service,
                caller,
                kind,
                started_ms: crate::time::now_ms(),
                method: String::new(),
                path: String::new(),
                status: None,
                grpc_status: None,
                wait_ms: 0.0,
                service_ms: None,
                total_ms: None,
                trace_id: None,
                span_id: None,
                parent_span_id: None,
                replay_of: None,
                error: None,
                note: None,
                bytes_up: 0,
                bytes_down: 0,
                complete: false,
            },
            version: "",
            request_headers: Default::default(),
            request_body: Default::default(),
            response_headers: Default::default(),
            response_body: Default::default(),
            response_trailers: Default::default(),
            trace_inferred: false,
        }
    }
}

/// A captured body: text when it is UTF-8, else base64.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Body {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base64: Option<String>,
    /// The whole body's size, kept or not.
    pub size: u64,
    /// Only the first bytes were kept.
    pub truncated: bool,
    /// When its pieces arrived, when it came in more than one (a stream's
    /// messages, say).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub arrivals: Vec<Arrival>,
}

/// The kept bytes of a body reached `end` `ms` after its exchange began.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Arrival {
    pub end: u64,
    pub ms: f64,
}

impl Body {
    pub fn new(bytes: Vec<u8>, size: u64, truncated: bool) -> Body {
        match String::from_utf8(bytes) {
            Ok(text) => Body {
                text: Some(text),
                base64: None,
                size,
                truncated,
                arrivals: Vec::new(),
            },
            Err(e) => Body {
                text: None,
                base64: Some(base64(e.as_bytes())),
                size,
                truncated,
                arrivals: Vec::new(),
            },
        }
    }

    /// The bytes kept.
    pub fn bytes(&self) -> Vec<u8> {
        match (&self.text, &self.base64) {
            (Some(text), _) => text.clone().into_bytes(),
            (None, Some(encoded)) => unbase64(encoded),
            (None, None) => Vec::new(),
        }
    }
}

/// What the list shows of an exchange, without headers and bodies.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub id: u64,
    /// The service called.
    pub service: Arc<str>,
    /// The service that called, or `external`.
    pub caller: Arc<str>,
    pub kind: Kind,
    /// Milliseconds since the Unix epoch.
    pub started_ms: u64,
    pub method: String,
    /// Path and query.
    pub path: String,
    pub status: Option<u16>,
    /// A gRPC call's status (0: OK), from its trailers, or its headers
    /// when it had only those: HTTP says 200 either way.
    pub grpc_status: Option<u8>,
    /// Time spent waiting for a ready instance (restarting, building).
    pub wait_ms: f64,
    /// Time from forwarding the request to the response head: the service's own time.
    pub service_ms: Option<f64>,
    /// Time from arrival to the end of the response body.
    pub total_ms: Option<f64>,
    pub trace_id: Option<TraceId>,
    /// Its span at the front port (the parent the service was told), and
    /// the span of the caller's that made it: the trace's tree.
    pub span_id: Option<SpanId>,
    pub parent_span_id: Option<SpanId>,
    /// The exchange this one replays.
    pub replay_of: Option<u64>,
    pub error: Option<String>,
    /// Something unusual that is no failure: a client that closed once it
    /// had the answer's head, before reading all of its body.
    pub note: Option<String>,
    /// Bytes from client to service and back (bodies, or the stream).
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// Whether it has ended (response body done, connection closed).
    pub complete: bool,
}

/// Headers as captured: one string of `name: value` lines, so capturing a
/// request's headers costs one allocation; shown as `[name, value]` pairs.
#[derive(Debug, Clone, Default)]
pub struct Headers(String);

impl Headers {
    /// Headers as [`Headers::text`] gave them.
    pub fn from_text(text: String) -> Headers {
        Headers(text)
    }

    /// The header lines.
    pub fn text(&self) -> &str {
        &self.0
    }

    /// The header lines of an HTTP/1 head, as they came.
    pub fn from_lines(lines: &[u8]) -> Headers {
        // Checking is faster than the lossy conversion, and nearly always enough.
        match std::str::from_utf8(lines) {
            Ok(text) => Headers(text.to_owned()),
            Err(_) => Headers(String::from_utf8_lossy(lines).into_owned()),
        }
    }

    pub fn new(map: &HeaderMap) -> Headers {
        let size = map.iter().map(|(k, v)| k.as_str().len() + v.len() + 3).sum();
        let mut text = String::with_capacity(size);
        for (name, value) in map {
            text.push_str(name.as_str());
            text.push_str(": ");
            // Header values are bytes; they are nearly always ASCII.
            text.push_str(&String::from_utf8_lossy(value.as_bytes()));
            text.push('\n');
        }
        Headers(text)
    }

    /// `(name, value)` pairs.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        // A value holds no line break: HTTP forbids it.
        self.0
            .lines()
            .filter_map(|line| line.split_once(':'))
            .map(|(name, value)| (name, value.trim()))
    }

    pub fn pairs(&self) -> Vec<(String, String)> {
        self.iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<String> {
        self.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.to_owned())
    }
}

impl Serialize for Headers {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut list = serializer.serialize_seq(None)?;
        for pair in self.iter() {
            list.serialize_element(&pair)?;
        }
        list.end()
    }
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

pub fn base64(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn unbase64(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut buffer, mut bits) = (0u32, 0);
    for byte in text.bytes() {
        let Some(value) = ALPHABET.iter().position(|&c| c == byte) else {
            continue;
        };
        buffer = (buffer << 6) | value as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_reads_back_from_its_code() {
        for kind in [Kind::Http, Kind::WebSocket, Kind::Tcp] {
            assert_eq!(Kind::of_code(kind.code()), Some(kind));
        }
        assert_eq!(Kind::of_code(3), None);
    }

    #[test]
    fn base64_round_trips() {
        for input in [&b""[..], b"f", b"fo", b"foo", b"foob", b"\xff\x00\xfe"] {
            assert_eq!(unbase64(&base64(input)), input);
        }
        assert_eq!(base64(b"foob"), "Zm9vYg==");
    }

    #[test]
    fn bodies_are_text_when_they_can_be() {
        assert_eq!(Body::new(b"{}".to_vec(), 2, false).text.as_deref(), Some("{}"));
        let binary = Body::new(vec![0xff, 0x00], 2, false);
        assert_eq!(binary.base64.as_deref(), Some("/wA="));
        assert_eq!(binary.bytes(), vec![0xff, 0x00]);
    }
}
