//! A body that passes through unchanged while the inspector keeps a copy
//! of its first bytes.

use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use hyper::body::Bytes;

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
    /// Its trailers, when it had some (HTTP/2: gRPC's status).
    pub trailers: Option<hyper::HeaderMap>,
}

impl Seen {
    /// Counts `data` as passed, keeping what fits under `limit` bytes.
    pub fn record(&mut self, data: &[u8], limit: usize) {
        self.size += data.len() as u64;
        let room = limit.saturating_sub(self.kept.len());
        self.kept.extend_from_slice(&data[..data.len().min(room)]);
        self.truncated |= data.len() > room;
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

impl<B: Body<Data = Bytes> + Unpin> Body for Tee<B> {
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
        // An empty body may never be polled: that is a finished one.
        let finished = self.seen.size == 0;
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
}
