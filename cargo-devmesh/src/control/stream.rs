//! The API's streams: exports of the whole store a page at a time, and
//! live events for the page and `traffic -f`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::BodyExt;
use hyper::Response;
use hyper::body::Bytes;
use hyper::header;
use serde::Serialize;
use tokio::sync::{broadcast, mpsc};

use super::{Api, ApiResponse, filter};
use crate::inspector::{Event, har};

/// Exchanges an export reads at a time, and chunks it has on their way.
const EXPORT_PAGE: usize = 64;
const EXPORT_CHUNKS: usize = 4;

/// What an export is written as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Export {
    Har,
    JsonLines,
}

impl Api {
    /// Streams every exchange that matches `query`, oldest first (after
    /// `after`; at most `limit`), a page at a time: memory stays within a
    /// page and the channel's few, however many are kept, and pages are
    /// read on the blocking pool, so other calls are answered meanwhile.
    /// Before, a JSON-lines export of 180,000 exchanges held 437 MB and kept
    /// `/api/services` waiting 7.8 s.
    pub(super) fn export(&self, query: &HashMap<String, String>, format: Export) -> ApiResponse {
        let mut filter = filter(query);
        let start = filter.after.take().unwrap_or(0);
        let mut left = query
            .get("limit")
            .and_then(|l| l.parse::<usize>().ok())
            .unwrap_or(usize::MAX);
        filter.limit = None;
        let (sender, receiver) = mpsc::channel::<Bytes>(EXPORT_CHUNKS);
        let inspector = Arc::clone(&self.mesh.inspector);
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let mut cursor = Some(start);
            let mut first = true;
            if format == Export::Har && sender.send(Bytes::from_static(har::START.as_bytes())).await.is_err() {
                return;
            }
            while let Some(after) = cursor {
                let (inspector, filter) = (Arc::clone(&inspector), filter.clone());
                let page = tokio::task::spawn_blocking(move || inspector.store.page(&filter, after, EXPORT_PAGE));
                let page = tokio::select! {
                    () = shutdown.cancelled() => return,
                    page = page => match page { Ok(page) => page, Err(_) => return },
                };
                let mut chunk = Vec::new();
                let taken = page.exchanges.len().min(left);
                left -= taken;
                for exchange in &page.exchanges[..taken] {
                    match format {
                        Export::JsonLines => {
                            serde_json::to_writer(&mut chunk, exchange).expect("exchanges serialize");
                            chunk.push(b'\n');
                        }
                        Export::Har => {
                            let Some(entry) = har::entry(exchange) else { continue };
                            if !std::mem::take(&mut first) {
                                chunk.push(b',');
                            }
                            serde_json::to_writer(&mut chunk, &entry).expect("entries serialize");
                        }
                    }
                }
                cursor = page.next.filter(|_| left > 0);
                if !chunk.is_empty() && sender.send(Bytes::from(chunk)).await.is_err() {
                    return;
                }
            }
            if format == Export::Har {
                let _ = sender.send(Bytes::from_static(har::END.as_bytes())).await;
            }
        });
        let mut response = Response::new(BodyExt::boxed(ChannelBody(receiver)));
        let content_type = match format {
            Export::Har => "application/json",
            Export::JsonLines => "application/x-ndjson",
        };
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
        response
    }

    /// Server-sent events: exchanges that began or changed, a tick at a
    /// time (`event: exchange`; `event: lagged` when more changed than a
    /// tick tells of), each log line (`event: log`).
    pub(super) fn events(&self) -> ApiResponse {
        let (sender, receiver) = mpsc::channel::<Bytes>(256);
        let mut exchanges = self.mesh.inspector.store.subscribe();
        let mut logs = self.mesh.logs.subscribe();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    () = shutdown.cancelled() => return,
                    event = exchanges.recv() => match event {
                        Ok(Event::Exchange(summary)) => sse("exchange", &summary),
                        Ok(Event::Lagged) | Err(broadcast::error::RecvError::Lagged(_)) => sse("lagged", &()),
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    line = logs.recv() => match line {
                        Ok(line) => sse("log", &line),
                        Err(broadcast::error::RecvError::Lagged(_)) => sse("lagged", &()),
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                };
                if sender.send(event).await.is_err() {
                    return;
                }
            }
        });
        let mut response = Response::new(BodyExt::boxed(ChannelBody(receiver)));
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/event-stream"),
        );
        headers.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
        response
    }
}

fn sse(event: &str, data: &impl Serialize) -> Bytes {
    let data = serde_json::to_string(data).expect("events serialize");
    Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}

/// A body fed by a channel, for streams.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|bytes| Ok(http_body::Frame::data(bytes))))
    }
}
