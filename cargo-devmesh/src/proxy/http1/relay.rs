//! Moving the bytes of one message from one side to the other: buffers,
//! heads read whole, bodies relayed to where their framing says they end.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::inspector::Seen;
use crate::proxy::message::{ChunkError, Chunked, Framing, HeadError};

/// Read buffers start this large, which holds most whole exchanges.
const BUFFER: usize = 16 * 1024;
/// A head larger than this is refused (431), as most servers do.
pub const MAX_HEAD: usize = 64 * 1024;

/// One direction of an exchange: bytes read `from` one side into `buffer`
/// and written `to` the other.
pub struct Relay<'a, R, W> {
    pub buffer: &'a mut Buffer,
    pub from: &'a mut R,
    pub to: &'a mut W,
    /// Bytes of a body kept for the inspector.
    pub limit: usize,
}

/// Why a body did not pass whole.
#[derive(Debug, thiserror::Error)]
pub enum Broken {
    #[error("reading it failed: {0}")]
    Source(io::Error),
    #[error("it ended early")]
    Ended,
    /// The head, and the first of the body with it, could not be written:
    /// the other side has none of the message.
    #[error("writing its head failed: {0}")]
    HeadSink(io::Error),
    /// The head went out; writing the body failed.
    #[error("writing it failed: {0}")]
    Sink(io::Error),
    #[error(transparent)]
    Framing(#[from] ChunkError),
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Relay<'_, R, W> {
    /// Writes `head`, then the body of `framing` that follows it, the first
    /// of it in the same write; records the body's data in `seen`.
    pub async fn body(self, head: &mut Vec<u8>, framing: Framing, seen: &mut Seen) -> Result<(), Broken> {
        let mut rest = Rest::from(framing);
        let mut pending = Some(head);
        loop {
            let taken = rest.take(self.buffer.filled(), seen, self.limit)?;
            let bytes = &self.buffer.filled()[..taken];
            match pending.take() {
                Some(head) => {
                    let written = head.len();
                    head.extend_from_slice(bytes);
                    let sent = self.to.write_all(head).await;
                    // The head stays for a second try on a new connection.
                    head.truncate(written);
                    sent.map_err(Broken::HeadSink)?;
                }
                None if taken > 0 => self.to.write_all(bytes).await.map_err(Broken::Sink)?,
                None => {}
            }
            self.buffer.consume(taken);
            if rest.done() {
                seen.finished = true;
                return Ok(());
            }
            match self.buffer.fill(self.from).await {
                Ok(0) if matches!(rest, Rest::UntilClose) => {
                    seen.finished = true;
                    return Ok(());
                }
                Ok(0) => return Err(Broken::Ended),
                Ok(_) => {}
                Err(e) => return Err(Broken::Source(e)),
            }
        }
    }
}

/// What is left of a body.
#[derive(Debug)]
enum Rest {
    Length(u64),
    Chunked(Chunked),
    UntilClose,
}

impl From<Framing> for Rest {
    fn from(framing: Framing) -> Rest {
        match framing {
            Framing::Length(n) => Rest::Length(n),
            Framing::Chunked => Rest::Chunked(Chunked::default()),
            Framing::UntilClose => Rest::UntilClose,
        }
    }
}

impl Rest {
    /// How much of `input` is body, recording its data.
    fn take(&mut self, input: &[u8], seen: &mut Seen, limit: usize) -> Result<usize, ChunkError> {
        match self {
            Rest::Length(left) => {
                let n = usize::try_from(*left).unwrap_or(usize::MAX).min(input.len());
                seen.record(&input[..n], limit);
                *left -= n as u64;
                Ok(n)
            }
            Rest::Chunked(chunked) => chunked.scan(input, |data| seen.record(data, limit)),
            Rest::UntilClose => {
                seen.record(input, limit);
                Ok(input.len())
            }
        }
    }

    fn done(&self) -> bool {
        match self {
            Rest::Length(left) => *left == 0,
            Rest::Chunked(chunked) => chunked.done(),
            Rest::UntilClose => false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Io(io::Error),
    #[error(transparent)]
    Head(HeadError),
    #[error("the message head is larger than {MAX_HEAD} bytes")]
    TooLarge,
    #[error("the request head did not arrive whole in time")]
    TimedOut,
}

/// Reads until `buffer` starts with a whole head; `None` when the peer
/// closed before sending a byte of one.
pub async fn read_head<T>(
    buffer: &mut Buffer,
    from: &mut (impl AsyncRead + Unpin),
    parse: impl Fn(&[u8]) -> Result<Option<T>, HeadError>,
) -> Result<Option<T>, ReadError> {
    loop {
        if !buffer.filled().is_empty()
            && let Some(head) = parse(buffer.filled()).map_err(ReadError::Head)?
        {
            return Ok(Some(head));
        }
        if buffer.filled().len() >= MAX_HEAD {
            return Err(ReadError::TooLarge);
        }
        match buffer.fill(from).await.map_err(ReadError::Io)? {
            0 if buffer.filled().is_empty() => return Ok(None),
            0 => {
                return Err(ReadError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the connection closed mid-head",
                )));
            }
            _ => {}
        }
    }
}

/// Bytes read from a socket and not used yet.
#[derive(Debug)]
pub struct Buffer {
    bytes: Vec<u8>,
    start: usize,
    end: usize,
}

impl Buffer {
    pub fn new() -> Buffer {
        Buffer {
            bytes: vec![0; BUFFER],
            start: 0,
            end: 0,
        }
    }

    pub fn filled(&self) -> &[u8] {
        &self.bytes[self.start..self.end]
    }

    pub fn consume(&mut self, n: usize) {
        self.start += n;
        debug_assert!(self.start <= self.end);
    }

    /// Puts `bytes` back in front of what is there, to be read again.
    pub fn put_back(&mut self, bytes: &[u8]) {
        if self.start >= bytes.len() {
            self.start -= bytes.len();
            self.bytes[self.start..self.start + bytes.len()].copy_from_slice(bytes);
        } else {
            let mut joined = bytes.to_vec();
            joined.extend_from_slice(self.filled());
            let end = joined.len();
            joined.resize(end.max(BUFFER), 0);
            (self.bytes, self.start, self.end) = (joined, 0, end);
        }
    }

    /// Reads what is there into the free end, making room first.
    pub async fn fill(&mut self, from: &mut (impl AsyncRead + Unpin)) -> io::Result<usize> {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        } else if self.end == self.bytes.len() {
            if self.start > 0 {
                self.bytes.copy_within(self.start..self.end, 0);
                (self.start, self.end) = (0, self.end - self.start);
            } else {
                // A head longer than the buffer: room up to `MAX_HEAD`
                // (`read_head` stops there).
                self.bytes.resize((self.bytes.len() * 2).min(MAX_HEAD), 0);
            }
        }
        let n = from.read(&mut self.bytes[self.end..]).await?;
        self.end += n;
        Ok(n)
    }
}
