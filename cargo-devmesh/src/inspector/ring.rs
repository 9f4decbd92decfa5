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

use super::exchange::{Arrival, Body, Exchange, Headers, Kind, Summary};
use super::trace::{SpanId, TraceId};

/// The ring and where each record in it is, oldest first.
#[derive(Debug)]
pub struct Ring {
    bytes: Vec<u8>,
    records: VecDeque<Record>,
    /// Where the next batch goes, counted in bytes ever written (with the
    /// padding left when a batch would not fit before the end).
    end: u64,
    /// An empty stage, traded for a full one when it comes in.
    spare: Stage,
}

/// Records on their way into the ring, kept apart so that they can be
/// added under one lock and copied in under another.
#[derive(Debug, Clone, Default)]
pub struct Stage {
    bytes: Vec<u8>,
    /// Placed relative to the stage.
    records: Vec<Record>,
    /// How full the stage gets before it goes in.
    limit: usize,
}

/// Bytes staged before they go into the ring (less for a small ring).
const STAGE: usize = 64 * 1024;

#[derive(Debug, Clone, Copy)]
struct Record {
    id: u64,
    at: u64,
    len: u32,
}

impl Stage {
    /// A stage for a ring of `capacity` bytes.
    pub fn new(capacity: usize) -> Stage {
        let limit = STAGE.min(capacity / 8).max(1);
        Stage {
            bytes: Vec::with_capacity(limit),
            records: Vec::new(),
            limit,
        }
    }

    /// Adds the record `write` appends as exchange `id`, written in place;
    /// says whether the stage is now full.
    pub fn push(&mut self, id: u64, write: impl FnOnce(&mut Vec<u8>)) -> bool {
        let at = self.bytes.len();
        write(&mut self.bytes);
        match u32::try_from(self.bytes.len() - at) {
            Ok(len) => self.records.push(Record { id, at: at as u64, len }),
            Err(_) => self.bytes.truncate(at),
        }
        self.is_full()
    }

    pub fn is_full(&self) -> bool {
        self.bytes.len() >= self.limit
    }

    /// Full several times over: whoever moves stages into the ring has
    /// fallen behind, and the memory cap needs them moved now.
    pub fn is_overfull(&self) -> bool {
        self.bytes.len() >= 4 * self.limit
    }

    /// Records, oldest first, as `(id, bytes)`.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (u64, &[u8])> {
        self.records
            .iter()
            .map(|r| (r.id, &self.bytes[r.at as usize..(r.at + u64::from(r.len)) as usize]))
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.records.clear();
    }
}

impl Ring {
    /// A ring of `capacity` bytes. Its pages are the kernel's until
    /// written, so memory is taken as traffic fills the ring. They are small
    /// pages: the first write to a huge one zeroes 2 MiB at once, and while
    /// a huge-paged ring filled, p99 through the proxy was 3 ms instead of
    /// 0.5 (bench/proxy's first round).
    pub fn new(capacity: usize) -> Ring {
        let bytes = vec![0; capacity];
        crate::platform::leave_out_of_forks(&bytes);
        Ring {
            bytes,
            // Room for as many records as small exchanges fill the ring
            // with, so that the index does not grow by copying while the
            // proxy waits; untouched, the room costs no memory.
            records: VecDeque::with_capacity(capacity / 256),
            end: 0,
            spare: Stage::new(capacity),
        }
    }

    /// Trades `stage` for the ring's empty one; [`Ring::keep_traded`] then
    /// copies it in. Two steps, so that whoever fills stages can go on
    /// while the copy is made.
    pub fn trade(&mut self, stage: &mut Stage) {
        std::mem::swap(stage, &mut self.spare);
    }

    /// Copies the stage last traded in; the oldest records go as newer
    /// ones overwrite them, and records that cannot fit are not kept.
    pub fn keep_traded(&mut self) {
        let capacity = self.bytes.len() as u64;
        let mut stage = std::mem::take(&mut self.spare);
        // Only the newest records of a stage larger than the ring fit.
        let first = stage
            .records
            .iter()
            .position(|r| stage.bytes.len() as u64 - r.at <= capacity)
            .unwrap_or(stage.records.len());
        if let Some(from) = stage.records.get(first).map(|r| r.at) {
            let len = stage.bytes.len() as u64 - from;
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
            self.bytes[offset..offset + len as usize].copy_from_slice(&stage.bytes[from as usize..]);
            self.records.extend(stage.records[first..].iter().map(|r| Record {
                at: at + r.at - from,
                ..*r
            }));
            self.end = end;
        }
        stage.clear();
        self.spare = stage;
    }

    /// Records, oldest first, as `(id, bytes)`.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (u64, &[u8])> {
        let capacity = self.bytes.len() as u64;
        self.records.iter().map(move |r| {
            let offset = (r.at % capacity) as usize;
            (r.id, &self.bytes[offset..offset + r.len as usize])
        })
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.records.len()
    }
}

/// Who called whom, and how it went: what the call map reads of an
/// exchange, read in place from the start of its record.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Call<'a> {
    pub caller: &'a str,
    pub service: &'a str,
    pub status: Option<u16>,
    pub grpc_status: Option<u8>,
    pub service_ms: Option<f64>,
    pub total_ms: Option<f64>,
    pub error: Option<&'a str>,
}

impl Call<'_> {
    /// Whether the call failed: an error, a 5xx, or a gRPC status but OK.
    pub fn failed(&self) -> bool {
        self.error.is_some() || self.status.is_some_and(|s| s >= 500) || self.grpc_status.is_some_and(|s| s != 0)
    }
}

impl<'a> Call<'a> {
    pub fn of(s: &'a Summary) -> Call<'a> {
        Call {
            caller: &s.caller,
            service: &s.service,
            status: s.status,
            grpc_status: s.grpc_status,
            service_ms: s.service_ms,
            total_ms: s.total_ms,
            error: s.error.as_deref(),
        }
    }
}

/// Writes `exchange` as a record into `out`: what [`decode_call`] reads
/// first, so that it reads no further, then the rest of its summary, its
/// headers and bodies.
pub fn encode(exchange: &Exchange, out: &mut Vec<u8>) {
    let mut w = Writer(out);
    let s = &exchange.summary;
    w.str(&s.caller);
    w.str(&s.service);
    w.option(s.status, |w, status| w.u64(u64::from(status)));
    w.option(s.grpc_status, Writer::u8);
    w.option(s.service_ms, Writer::f64);
    w.option(s.total_ms, Writer::f64);
    w.option(s.error.as_deref(), Writer::str);
    w.u64(s.id);
    w.u8(s.kind.code());
    w.u64(s.started_ms);
    w.str(&s.method);
    w.str(&s.path);
    w.f64(s.wait_ms);
    w.option(s.trace_id, |w, t| {
        w.u64((t.0 >> 64) as u64);
        w.u64(t.0 as u64);
    });
    w.option(s.span_id, |w, span| w.u64(span.0));
    w.option(s.parent_span_id, |w, span| w.u64(span.0));
    w.option(s.replay_of, Writer::u64);
    w.u64(s.bytes_up);
    w.u64(s.bytes_down);
    w.u8(u8::from(s.complete));
    w.option(s.note.as_deref(), Writer::str);
    w.u8(VERSIONS.iter().position(|v| *v == exchange.version).unwrap_or(0) as u8);
    w.str(exchange.request_headers.text());
    w.body(&exchange.request_body);
    w.str(exchange.response_headers.text());
    w.body(&exchange.response_body);
    w.str(exchange.response_trailers.text());
    w.u8(u8::from(exchange.trace_inferred));
}

/// Reads a record written by [`encode`].
pub fn decode(record: &[u8]) -> Exchange {
    let mut r = Reader(record);
    Exchange {
        summary: r.summary(),
        version: VERSIONS.get(usize::from(r.u8())).copied().unwrap_or(""),
        request_headers: Headers::from_text(r.str().to_owned()),
        request_body: r.body(),
        response_headers: Headers::from_text(r.str().to_owned()),
        response_body: r.body(),
        response_trailers: Headers::from_text(r.str().to_owned()),
        trace_inferred: r.u8() == 1,
    }
}

/// Reads the call in a record written by [`encode`], allocating nothing.
pub fn decode_call(record: &[u8]) -> Call<'_> {
    Reader(record).call()
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
        self.0.extend_from_slice(&(body.arrivals.len() as u32).to_le_bytes());
        for arrival in &body.arrivals {
            self.u64(arrival.end);
            self.f64(arrival.ms);
        }
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

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take(4).try_into().expect("4 bytes"))
    }

    fn str(&mut self) -> &'a str {
        let len = self.u32() as usize;
        std::str::from_utf8(self.take(len)).expect("records hold the text they were given")
    }

    fn option<T>(&mut self, read: impl FnOnce(&mut Self) -> T) -> Option<T> {
        (self.u8() == 1).then(|| read(self))
    }

    fn call(&mut self) -> Call<'a> {
        Call {
            caller: self.str(),
            service: self.str(),
            status: self.option(|r| r.u64() as u16),
            grpc_status: self.option(Reader::u8),
            service_ms: self.option(Reader::f64),
            total_ms: self.option(Reader::f64),
            error: self.option(Reader::str),
        }
    }

    fn summary(&mut self) -> Summary {
        let call = self.call();
        Summary {
            caller: Arc::from(call.caller),
            service: Arc::from(call.service),
            status: call.status,
            grpc_status: call.grpc_status,
            service_ms: call.service_ms,
            total_ms: call.total_ms,
            error: call.error.map(str::to_owned),
            id: self.u64(),
            kind: Kind::of_code(self.u8()).expect("records hold the kinds they were given"),
            started_ms: self.u64(),
            method: self.str().to_owned(),
            path: self.str().to_owned(),
            wait_ms: self.f64(),
            trace_id: self.option(|r| TraceId((u128::from(r.u64()) << 64) | u128::from(r.u64()))),
            span_id: self.option(|r| SpanId(r.u64())),
            parent_span_id: self.option(|r| SpanId(r.u64())),
            replay_of: self.option(Reader::u64),
            bytes_up: self.u64(),
            bytes_down: self.u64(),
            complete: self.u8() == 1,
            note: self.option(|r| r.str().to_owned()),
        }
    }

    fn body(&mut self) -> Body {
        Body {
            text: self.option(|r| r.str().to_owned()),
            base64: self.option(|r| r.str().to_owned()),
            size: self.u64(),
            truncated: self.u8() == 1,
            arrivals: (0..self.u32())
                .map(|_| Arrival {
                    end: self.u64(),
                    ms: self.f64(),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspector::Exchange;

    fn sample(id: u64) -> Exchange {
        let mut e = Exchange::begun("orders".into(), "gateway".into(), Kind::Http);
        e.id = id;
        e.method = "POST".into();
        e.path = format!("/orders/{id}");
        e.version = "HTTP/1.1";
        e.request_headers = Headers::from_lines(b"host: a\r\ncontent-type: application/json\r\n");
        e.request_body = Body::new(br#"{"item":"tea"}"#.to_vec(), 14, false);
        e.response_body = Body::new(vec![0xff, 0], 2, false);
        e.response_body.arrivals = vec![Arrival { end: 1, ms: 0.5 }, Arrival { end: 2, ms: 7.25 }];
        e.status = Some(201);
        e.service_ms = Some(1.5);
        e.trace_id = Some(TraceId(u128::MAX - 7));
        e.span_id = Some(SpanId(9));
        e.error = Some("cut".into());
        e.note = Some("a note".into());
        e.complete = true;
        e
    }

    #[test]
    fn a_record_reads_back_as_the_exchange_it_was() {
        let (exchange, mut bytes) = (sample(3), Vec::new());
        encode(&exchange, &mut bytes);
        let back = decode(&bytes);
        assert_eq!(
            serde_json::to_value(&back).unwrap(),
            serde_json::to_value(&exchange).unwrap()
        );
        assert_eq!(decode_call(&bytes), Call::of(&exchange.summary));
    }

    /// Pushes records as the store does: staged, traded in when full.
    fn fill(ring: &mut Ring, stage: &mut Stage, records: impl Iterator<Item = (u64, Vec<u8>)>) {
        for (id, record) in records {
            if stage.push(id, |out| out.extend_from_slice(&record)) {
                ring.trade(stage);
                ring.keep_traded();
            }
        }
    }

    #[test]
    fn staged_records_are_kept_and_seen_in_order() {
        let mut ring = Ring::new(1 << 20);
        let mut stage = Stage::new(1 << 20);
        fill(
            &mut ring,
            &mut stage,
            (1..=3000u64).map(|id| (id, id.to_le_bytes().repeat(10))),
        );
        let ids: Vec<u64> = ring.iter().chain(stage.iter()).map(|(id, _)| id).collect();
        assert_eq!(ids, (1..=3000).collect::<Vec<_>>());
        assert!(
            ring.iter()
                .chain(stage.iter())
                .all(|(id, bytes)| bytes == id.to_le_bytes().repeat(10))
        );
        assert!(
            stage.iter().next().is_some() && ring.len() > 0,
            "some staged, some in the ring"
        );
    }

    #[test]
    fn the_ring_keeps_the_newest_whole_records() {
        let mut ring = Ring::new(100);
        let mut stage = Stage::new(100);
        fill(&mut ring, &mut stage, (1..=20u64).map(|id| (id, vec![id as u8; 30])));
        let kept: Vec<(u64, Vec<u8>)> = ring.iter().map(|(id, bytes)| (id, bytes.to_vec())).collect();
        assert_eq!(kept.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [18, 19, 20]);
        assert!(kept.iter().all(|(id, bytes)| bytes == &vec![*id as u8; 30]));
        fill(&mut ring, &mut stage, [(21, vec![0; 101])].into_iter());
        assert_eq!(ring.len(), 3, "a record larger than the ring is not kept");
    }
}
