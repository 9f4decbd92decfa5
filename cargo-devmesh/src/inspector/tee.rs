//! A body that passes through unchanged while the inspector keeps a copy
//! of its first bytes.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use http_body::{Frame, SizeHint};
use hyper::body::{Body as HttpBody, Bytes};

use super::exchange::{Arrival, Body};

/// What a tee saw, handed over when the body ends or is dropped.
#[derive(Debug, Default)]
pub struct Seen {
    /// The first bytes, up to the limit.
    pub kept: Vec<u8>,
    /// All bytes that passed.
    pub size: u64,
    pub truncated: bool,
    /// Whether the body reached its end (not dropped or failed midway).
    pub finished: bool,
    /// Whether its reader let it go before its end (the client closed,
    /// once it had the head), rather than its sender failing midway.
    pub abandoned: bool,
    /// Its trailers, when it had some (HTTP/2: gRPC's status).
    pub trailers: Option<hyper::HeaderMap>,
    /// When the first kept piece arrived, and how far the kept bytes then
    /// reached; the later pieces are in `later`. A body that came in one
    /// piece allocates nothing for its timing.
    first: Option<Mark>,
    later: Vec<Mark>,
}

/// The kept bytes reached `end` at `at`.
type Mark = (usize, Instant);

/// Pieces whose arrival is noted, per body: a long stream's first
/// messages are timed, and its memory stays bounded.
const MAX_ARRIVALS: usize = 1024;

impl Seen {
    /// A whole body of `size` bytes, none kept.
    pub fn passed(size: u64) -> Seen {
        Seen {
            size,
            finished: true,
            ..Seen::default()
        }
    }

    /// Counts `data` as passed, keeping what fits under `limit` bytes and
    /// noting when it arrived.
    pub fn record(&mut self, data: &[u8], limit: usize) {
        self.size += data.len() as u64;
        let room = limit.saturating_sub(self.kept.len());
        self.kept.extend_from_slice(&data[..data.len().min(room)]);
        self.truncated |= data.len() > room;
        if room > 0 && !data.is_empty() {
            let mark = (self.kept.len(), Instant::now());
            match self.first {
                None => self.first = Some(mark),
                Some(_) if self.later.len() < MAX_ARRIVALS => self.later.push(mark),
                Some(_) => {}
            }
        }
    }

    /// The kept bytes as a captured body, with when its pieces arrived,
    /// counted from `origin` (when the exchange began), when it came in
    /// more than one.
    pub fn take_body(&mut self, origin: Instant) -> Body {
        let mut body = Body::new(std::mem::take(&mut self.kept), self.size, self.truncated);
        if !self.later.is_empty() {
            body.arrivals = self
                .first
                .iter()
                .chain(&self.later)
                .map(|&(end, at)| Arrival {
                    end: end as u64,
                    ms: at.saturating_duration_since(origin).as_secs_f64() * 1000.0,
                })
                .collect();
        }
        body
    }
}

type OnEnd = Box<dyn FnOnce(Seen) + Send + Sync>;

/// Wraps `inner`, calling `on_end` once with what passed.
pub struct Tee<B> {
    inner: B,
    limit: usize,
    seen: Seen,
    on_end: Option<OnEnd>,
}

impl<B> std::fmt::Debug for Tee<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tee")
            .field("limit", &self.limit)
            .field("seen", &self.seen)
            .finish()
    }
}

impl<B> Tee<B> {
    pub fn new(inner: B, limit: usize, on_end: impl FnOnce(Seen) + Send + Sync + 'static) -> Tee<B> {
        Tee {
            inner,
            limit,
            seen: Seen::default(),
            on_end: Some(Box::new(on_end)),
        }
    }

    fn end(&mut self, finished: bool) {
        if let Some(on_end) = self.on_end.take() {
            let mut seen = std::mem::take(&mut self.seen);
            seen.finished = finished;
            on_end(seen);
        }
    }
}

impl<B: HttpBody<Data = Bytes> + Unpin> HttpBody for Tee<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.seen.record(data, this.limit);
                } else if let Some(trailers) = frame.trailers_ref() {
                    this.seen.trailers = Some(trailers.clone());
                }
                if this.inner.is_end_stream() {
                    this.end(true);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.end(false);
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.end(true);
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for Tee<B> {
    fn drop(&mut self) {
        // An empty body may never be polled: that is a finished one; any
        // other that is dropped unfinished was let go by its reader.
        let finished = self.seen.size == 0;
        self.seen.abandoned = !finished;
        self.end(finished);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};
    use std::sync::{Arc, Mutex};

    #[tokio::test]
    async fn keeps_the_first_bytes_and_counts_all() {
        let seen = Arc::new(Mutex::new(None));
        let sink = Arc::clone(&seen);
        let body = Tee::new(Full::new(Bytes::from("hello world")), 5, move |s| {
            *sink.lock().unwrap() = Some(s);
        });
        let passed = body.collect().await.unwrap().to_bytes();
        assert_eq!(passed, "hello world");
        let seen = seen.lock().unwrap().take().unwrap();
        assert_eq!(
            (seen.kept.as_slice(), seen.size, seen.truncated, seen.finished),
            (&b"hello"[..], 11, true, true)
        );
    }

    #[test]
    fn times_the_pieces_of_a_body_that_came_in_several() {
        let origin = Instant::now();
        let mut seen = Seen::default();
        seen.record(b"one", 100);
        assert!(seen.take_body(origin).arrivals.is_empty(), "one piece: nothing to time");

        let mut seen = Seen::default();
        for piece in [&b"one"[..], b"two", b"three"] {
            seen.record(piece, 8);
        }
        let arrivals = seen.take_body(origin).arrivals;
        // The third piece was kept only in part, and is timed as such.
        let ends: Vec<u64> = arrivals.iter().map(|a| a.end).collect();
        assert_eq!(ends, [3, 6, 8]);
        assert!(arrivals.windows(2).all(|w| w[0].ms <= w[1].ms));
    }
}
