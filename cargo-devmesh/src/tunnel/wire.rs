//! The tunnel's wire protocol, between the supervisor (the client) and
//! the relay, over one TCP connection. Every message is a frame:
//!
//! ```text
//! kind: u8 | stream: u32 (big-endian) | length: u32 (big-endian) | payload
//! ```
//!
//! | kind | from | stream | payload |
//! | --- | --- | --- | --- |
//! | `HELLO` | client | 0 | JSON [`Hello`]: protocol version, token, namespace, services |
//! | `WELCOME` | relay | 0 | JSON [`Welcome`]: each service's public URL |
//! | `REFUSED` | relay | 0 | why, in words; the relay closes |
//! | `OPEN` | both | new stream (relay's odd, supervisor's even) | from the relay: the service a public connection is for; from the supervisor: `dial host:port` inside the sandbox |
//! | `DATA` | both | stream | bytes |
//! | `WINDOW` | both | stream | u32: bytes the sender may send more (given back a quarter window at a time) |
//! | `CLOSE` | both | stream | nothing: the sender sends no more |
//! | `PING`, `PONG` | both | 0 | nothing: the link is alive |
//!
//! A payload is at most [`MAX_PAYLOAD`] bytes: a bigger length, or an
//! unknown kind, is a protocol error that ends the link, never a panic or
//! an allocation of what a peer claims. So is a `DATA` past the stream's
//! window, a `WINDOW` giving back more than was sent, an `OPEN` of an id
//! of the other side's parity or of a stream still open, and a handshake
//! frame after the handshake (`link`; fuzzed by `fuzz/`'s `tunnel_link`).
//! Version [`VERSION`] is in `HELLO`; a relay refuses another.

use serde::{Deserialize, Serialize};

/// The protocol's version, in `HELLO`.
pub const VERSION: u32 = 1;
/// The largest payload a frame may carry.
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// Bytes of a frame's header.
pub const HEADER: usize = 9;

/// What a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Hello = 1,
    Welcome = 2,
    Refused = 3,
    Open = 4,
    Data = 5,
    Window = 6,
    Close = 7,
    Ping = 8,
    Pong = 9,
}

impl Kind {
    fn of(code: u8) -> Option<Kind> {
        use Kind::*;
        [Hello, Welcome, Refused, Open, Data, Window, Close, Ping, Pong]
            .into_iter()
            .find(|k| *k as u8 == code)
    }
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: Kind,
    pub stream: u32,
    pub payload: Vec<u8>,
}

/// Why bytes are no frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("a frame of unknown kind {0}")]
    UnknownKind(u8),
    #[error("a frame of {0} bytes, more than the {MAX_PAYLOAD} allowed")]
    TooLarge(usize),
    #[error("a {0:?} frame whose payload is malformed")]
    Malformed(Kind),
}

impl Frame {
    pub fn new(kind: Kind, stream: u32, payload: Vec<u8>) -> Frame {
        Frame { kind, stream, payload }
    }

    /// The frame as bytes.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.kind as u8);
        out.extend_from_slice(&self.stream.to_be_bytes());
        out.extend_from_slice(&(self.payload.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.payload);
    }

    /// The first frame in `bytes` and how many bytes it took; `Ok(None)`
    /// when more bytes are needed.
    pub fn decode(bytes: &[u8]) -> Result<Option<(Frame, usize)>, FrameError> {
        let Some(header) = bytes.get(..HEADER) else {
            return Ok(None);
        };
        let kind = Kind::of(header[0]).ok_or(FrameError::UnknownKind(header[0]))?;
        let stream = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
        let length = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) as usize;
        if length > MAX_PAYLOAD {
            return Err(FrameError::TooLarge(length));
        }
        let Some(payload) = bytes.get(HEADER..HEADER + length) else {
            return Ok(None);
        };
        Ok(Some((Frame::new(kind, stream, payload.to_vec()), HEADER + length)))
    }

    /// A `WINDOW` frame's credit.
    pub fn credit(&self) -> Result<u32, FrameError> {
        let bytes: [u8; 4] = self
            .payload
            .as_slice()
            .try_into()
            .map_err(|_| FrameError::Malformed(self.kind))?;
        Ok(u32::from_be_bytes(bytes))
    }

    /// A JSON payload.
    pub fn json<T: for<'de> Deserialize<'de>>(&self) -> Result<T, FrameError> {
        serde_json::from_slice(&self.payload).map_err(|_| FrameError::Malformed(self.kind))
    }
}

/// The client's first frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub version: u32,
    pub token: String,
    pub namespace: String,
    /// The services to expose: name, and whether anyone may call it
    /// (`public`), or only callers with the team's token.
    pub services: Vec<Exposed>,
}

/// A service to expose.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exposed {
    pub name: String,
    pub public: bool,
}

/// The relay's answer: each service's public URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    pub urls: Vec<(String, String)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_need_all_their_bytes() {
        let frame = Frame::new(Kind::Data, 7, b"hello".to_vec());
        let mut bytes = Vec::new();
        frame.encode(&mut bytes);
        for cut in 0..bytes.len() {
            assert_eq!(Frame::decode(&bytes[..cut]), Ok(None), "{cut} bytes");
        }
        assert_eq!(Frame::decode(&bytes), Ok(Some((frame, bytes.len()))));
    }

    #[test]
    fn a_huge_length_or_an_unknown_kind_is_refused_before_any_allocation() {
        let mut huge = vec![Kind::Data as u8, 0, 0, 0, 1];
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(Frame::decode(&huge), Err(FrameError::TooLarge(u32::MAX as usize)));
        assert_eq!(Frame::decode(&[99; 9]), Err(FrameError::UnknownKind(99)));
    }

    /// The decoder on a million random inputs (a fuzz run that needs no
    /// nightly toolchain, bounded and deterministic): it answers, never
    /// panics, and what it takes is what a frame says.
    #[test]
    fn random_bytes_never_panic_the_decoder() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut bytes = Vec::with_capacity(64);
        for _ in 0..1_000_000 {
            bytes.clear();
            let len = (next() % 40) as usize;
            bytes.extend((0..len).map(|_| next() as u8));
            // Frames of the known kinds, with small lengths, now and then.
            if len > HEADER && next() % 2 == 0 {
                bytes[0] = (next() % 9 + 1) as u8;
                bytes[5..9].copy_from_slice(&((next() % 48) as u32).to_be_bytes());
            }
            if let Ok(Some((frame, used))) = Frame::decode(&bytes) {
                assert_eq!(used, HEADER + frame.payload.len());
                let _ = frame.credit();
                let _ = frame.json::<Hello>();
            }
        }
    }
}
