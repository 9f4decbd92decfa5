//! Finished exchanges, kept as records in one ring of bytes whose size is
//! the memory cap: keeping one copies its bytes in, over the oldest.
//!
//! Nothing is allocated or freed per exchange once the ring has filled. A
//! store of separately allocated exchanges, freed oldest first, had the
//! proxy free cold memory on every request and fragmented the heap until
//! latency suffered (bench/proxy). Records are staged in a small buffer
//! that stays in cache and go into the ring a batch at a time: one large
//! copy into memory last touched long ago costs far less than a small one
//! per request, each waiting on the cache lines it writes.

use std::collections::VecDeque;
use std::sync::Arc;

use super::exchange::{Body, Exchange, Headers, Kind};
use super::trace::{SpanId, TraceId};

/// The ring and where each record in it is, oldest first.
#[derive(Debug)]
pub struct Ring {
    bytes: Vec<u8>,
    records: VecDeque<Record>,
    /// Where the next batch goes, counted in bytes ever written (with the
    /// padding left when a batch would not fit before the end).
    end: u64,
    /// Records not in the ring yet, placed relative to the stage.
    staged: Vec<u8>,
    staged_records: Vec<Record>,
}

/// Bytes staged before they go into the ring (less for a small ring).
const STAGE: usize = 64 * 1024;

#[derive(Debug, Clone, Copy)]
struct Record {
    id: u64,
    at: u64,
    len: u32,
}

impl Ring {
    /// A ring of `capacity` bytes. Its pages are the kernel's until written.
    pub fn new(capacity: usize) -> Ring {
        let bytes = vec![0; capacity];
        huge_pages(&bytes);
        Ring {
            bytes,
            records: VecDeque::new(),
            end: 0,
            staged: Vec::with_capacity(STAGE.min(capacity)),
            staged_records: Vec::new(),
        }
    }

    /// Keeps `record` as exchange `id`; the oldest records go as newer ones
    /// overwrite them. A record larger than the ring is not kept.
    pub fn push(&mut self, id: u64, record: &[u8]) {
        if record.len() > self.bytes.len() || record.len() > u32::MAX as usize {
            return;
        }
        if self.staged.len() + record.len() > self.bytes.len() {
            self.flush();
        }
        self.staged_records.push(Record {
            id,
            at: self.staged.len() as u64,
            len: record.len() as u32,
        });
        self.staged.extend_from_slice(record);
        if self.staged.len() >= STAGE.min(self.bytes.len() / 8) {
            self.flush();
        }
    }

    /// Moves the staged records into the ring.
    fn flush(&mut self) {
        let (capacity, len) = (self.bytes.len() as u64, self.staged.len() as u64);
        if len == 0 {
            return;
        }
        let mut at = self.end;
        if at % capacity + len > capacity {
            at = at.next_multiple_of(capacity);
        }
        let end = at + len;
        // The ring holds the last `capacity` bytes written: older records are gone.
        while self
            .records
            .front()
            .is_some_and(|r| r.at < end.saturating_sub(capacity))
        {
            self.records.pop_front();
        }
        let offset = (at % capacity) as usize;
        self.bytes[offset..offset + self.staged.len()].copy_from_slice(&self.staged);
        self.records
            .extend(self.staged_records.iter().map(|r| Record { at: at + r.at, ..*r }));
        self.end = end;
        self.staged.clear();
        self.staged_records.clear();
    }

    /// Records, oldest first, as `(id, bytes)`.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (u64, &[u8])> {
        let capacity = self.bytes.len() as u64;
        let kept = self.records.iter().map(move |r| {
            let offset = (r.at % capacity) as usize;
            (r.id, &self.bytes[offset..offset + r.len as usize])
        });
        let staged = self
            .staged_records
            .iter()
            .map(|r| (r.id, &self.staged[r.at as usize..(r.at + u64::from(r.len)) as usize]));
        kept.chain(staged)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.records.len() + self.staged_records.len()
    }
}

/// Asks the kernel to back `bytes` with huge pages where it can: written
/// all over, a ring of small pages misses the TLB on most records.
fn huge_pages(bytes: &[u8]) {
    const PAGE: usize = 4096;
    let start = (bytes.as_ptr() as usize).next_multiple_of(PAGE);
    let end = (bytes.as_ptr() as usize + bytes.len()) / PAGE * PAGE;
    if end > start {
        // SAFETY: advice on memory this ring owns; it changes no contents.
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
    }
}

/// Writes `exchange` as a record into `out`.
pub fn encode(exchange: &Exchange, out: &mut Vec<u8>) {
    let mut w = Writer(out);
    w.u64(exchange.id);
    w.str(&exchange.service);
    w.str(&exchange.caller);
    w.u8(exchange.kind as u8);
    w.u64(exchange.started_ms);
    w.str(&exchange.method);
    w.str(&exchange.path);
    w.u8(VERSIONS.iter().position(|v| *v == exchange.version).unwrap_or(0) as u8);
    w.str(exchange.request_headers.text());
    w.body(&exchange.request_body);
    w.option(exchange.status, |w, s| w.u64(u64::from(s)));
    w.str(exchange.response_headers.text());
    w.body(&exchange.response_body);
    w.f64(exchange.wait_ms);
    w.option(exchange.service_ms, Writer::f64);
    w.option(exchange.total_ms, Writer::f64);
    w.option(exchange.trace_id, |w, t| {
        w.u64((t.0 >> 64) as u64);
        w.u64(t.0 as u64);
    });
    w.option(exchange.span_id, |w, s| w.u64(s.0));
    w.option(exchange.parent_span_id, |w, s| w.u64(s.0));
    w.u8(u8::from(exchange.trace_inferred));
    w.option(exchange.replay_of, Writer::u64);
    w.option(exchange.error.as_deref(), Writer::str);
    w.u64(exchange.bytes_up);
    w.u64(exchange.bytes_down);
    w.u8(u8::from(exchange.complete));
}

/// Reads a record written by [`encode`].
pub fn decode(record: &[u8]) -> Exchange {
    let mut r = Reader(record);
    Exchange {
        id: r.u64(),
        service: Arc::from(r.str()),
        caller: Arc::from(r.str()),
        kind: match r.u8() {
            1 => Kind::WebSocket,
            2 => Kind::Tcp,
            _ => Kind::Http,
        },
        started_ms: r.u64(),
        method: r.str().to_owned(),
        path: r.str().to_owned(),
        version: VERSIONS.get(usize::from(r.u8())).copied().unwrap_or(""),
        request_headers: Headers::from_text(r.str().to_owned()),
        request_body: r.body(),
        status: r.option(|r| r.u64() as u16),
        response_headers: Headers::from_text(r.str().to_owned()),
        response_body: r.body(),
        wait_ms: r.f64(),
        service_ms: r.option(Reader::f64),
        total_ms: r.option(Reader::f64),
        trace_id: r.option(|r| TraceId((u128::from(r.u64()) << 64) | u128::from(r.u64()))),
        span_id: r.option(|r| SpanId(r.u64())),
        parent_span_id: r.option(|r| SpanId(r.u64())),
        trace_inferred: r.u8() == 1,
        replay_of: r.option(Reader::u64),
        error: r.option(|r| r.str().to_owned()),
        bytes_up: r.u64(),
        bytes_down: r.u64(),
        complete: r.u8() == 1,
    }
}

/// The HTTP versions an exchange can name, by their code in a record.
const VERSIONS: [&str; 4] = ["", "HTTP/1.0", "HTTP/1.1", "HTTP/2.0"];

struct Writer<'a>(&'a mut Vec<u8>);

impl Writer<'_> {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }

    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }

    fn f64(&mut self, v: f64) {
        self.u64(v.to_bits());
    }

    fn str(&mut self, v: &str) {
        self.0.extend_from_slice(&(v.len() as u32).to_le_bytes());
        self.0.extend_from_slice(v.as_bytes());
    }

    fn option<T>(&mut self, v: Option<T>, write: impl FnOnce(&mut Self, T)) {
        self.u8(u8::from(v.is_some()));
        if let Some(v) = v {
            write(self, v);
        }
    }

    fn body(&mut self, body: &Body) {
        self.option(body.text.as_deref(), Writer::str);
        self.option(body.base64.as_deref(), Writer::str);
        self.u64(body.size);
        self.u8(u8::from(body.truncated));
    }
}

/// Reads what [`Writer`] wrote; records are the store's own, so a short
/// one is a bug, and panics.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> &'a [u8] {
        let (taken, rest) = self.0.split_at(n);
        self.0 = rest;
        taken
    }

    fn u8(&mut self) -> u8 {
        self.take(1)[0]
    }

    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take(8).try_into().expect("8 bytes"))
    }

    fn f64(&mut self) -> f64 {
        f64::from_bits(self.u64())
    }

    fn str(&mut self) -> &'a str {
        let len = u32::from_le_bytes(self.take(4).try_into().expect("4 bytes")) as usize;
        std::str::from_utf8(self.take(len)).expect("records hold the text they were given")
    }

    fn option<T>(&mut self, read: impl FnOnce(&mut Self) -> T) -> Option<T> {
        (self.u8() == 1).then(|| read(self))
    }

    fn body(&mut self) -> Body {
        Body {
            text: self.option(|r| r.str().to_owned()),
            base64: self.option(|r| r.str().to_owned()),
            size: self.u64(),
            truncated: self.u8() == 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspector::blank;

    fn sample(id: u64) -> Exchange {
        let mut e = blank("orders".into(), "gateway".into(), Kind::Http);
        e.id = id;
        e.method = "POST".into();
        e.path = format!("/orders/{id}");
        e.version = "HTTP/1.1";
        e.request_headers = Headers::from_lines(b"host: a\r\ncontent-type: application/json\r\n");
        e.request_body = Body::new(br#"{"item":"tea"}"#.to_vec(), 14, false);
        e.response_body = Body::new(vec![0xff, 0], 2, false);
        e.status = Some(201);
        e.service_ms = Some(1.5);
        e.trace_id = Some(TraceId(u128::MAX - 7));
        e.span_id = Some(SpanId(9));
        e.error = Some("cut".into());
        e.complete = true;
        e
    }

    #[test]
    fn a_record_reads_back_as_the_exchange_it_was() {
        let mut bytes = Vec::new();
        encode(&sample(3), &mut bytes);
        let back = decode(&bytes);
        assert_eq!(
            serde_json::to_value(&back).unwrap(),
            serde_json::to_value(sample(3)).unwrap()
        );
    }

    #[test]
    fn staged_records_are_kept_and_seen_in_order() {
        let mut ring = Ring::new(1 << 20);
        for id in 1..=3000u64 {
            ring.push(id, &id.to_le_bytes().repeat(10));
        }
        let ids: Vec<u64> = ring.iter().map(|(id, _)| id).collect();
        assert_eq!(ids, (1..=3000).collect::<Vec<_>>());
        assert!(ring.iter().all(|(id, bytes)| bytes == id.to_le_bytes().repeat(10)));
        assert!(
            !ring.staged.is_empty() && !ring.records.is_empty(),
            "some staged, some in the ring"
        );
    }

    #[test]
    fn the_ring_keeps_the_newest_whole_records() {
        let mut ring = Ring::new(100);
        for id in 1..=20u64 {
            ring.push(id, &[id as u8; 30]);
        }
        let kept: Vec<(u64, Vec<u8>)> = ring.iter().map(|(id, bytes)| (id, bytes.to_vec())).collect();
        assert_eq!(kept.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [18, 19, 20]);
        assert!(kept.iter().all(|(id, bytes)| bytes == &vec![*id as u8; 30]));
        ring.push(21, &[0; 101]);
        assert_eq!(ring.len(), 3, "a record larger than the ring is not kept");
    }
}
