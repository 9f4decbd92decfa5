//! Services' own telemetry: the supervisor is the OTLP endpoint of every
//! service it runs ([`serve`], OTLP/HTTP and OTLP/gRPC on one port, which
//! each service learns from `OTEL_EXPORTER_OTLP_ENDPOINT`).
//!
//! What comes in joins what devmesh already has: spans are kept by trace
//! beside the captured exchanges (a service's server span is the child of
//! its front port's hop, whose span id the port passed in `traceparent`),
//! log records go into the logs with their trace id, and each metric's
//! newest value is kept. Spans are bounded by a budget of their own, the
//! oldest going first; a service that sends faster than the store takes is
//! told to slow down (429, `RESOURCE_EXHAUSTED`).

pub mod otlp;
mod server;

pub use server::serve;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Instant;

use serde::Serialize;

use crate::logs::Logs;

/// Bytes of telemetry (decoded: gzip is no way around it) a service may
/// send per second before it is slowed.
const RATE: usize = 32 * 1024 * 1024;
/// Metrics kept at most (by service and name): the least recently updated
/// go first past it.
const MAX_METRICS: usize = 10_000;

/// The OTLP variables devmesh gives each service it runs.
pub const VARIABLES: [&str; 4] = [
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
];

/// [`VARIABLES`] for `service`, pointing at the endpoint at `addr`.
pub fn env(service: &str, addr: std::net::SocketAddr) -> [(&'static str, String); 4] {
    let [endpoint, protocol, name, attributes] = VARIABLES;
    [
        (endpoint, format!("http://{addr}")),
        (protocol, "http/protobuf".to_owned()),
        (name, service.to_owned()),
        (
            attributes,
            format!("service.namespace=devmesh,devmesh.service={service}"),
        ),
    ]
}

/// The telemetry services sent.
#[derive(Debug)]
pub struct Telemetry {
    spans: Mutex<Kept>,
    metrics: Mutex<BTreeMap<(String, String), Metric>>,
    /// Bytes taken per service in the current second.
    taken: Mutex<(Instant, BTreeMap<String, usize>)>,
    /// Bytes a service may send per second ([`RATE`]).
    rate: usize,
    logs: Logs,
    /// Bytes of spans kept at most.
    budget: usize,
}

#[derive(Debug, Default)]
struct Kept {
    spans: VecDeque<Span>,
    bytes: usize,
}

/// A span a service sent.
#[derive(Debug, Clone, Serialize)]
pub struct Span {
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: Option<String>,
    pub service: String,
    pub name: String,
    pub kind: &'static str,
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    /// Its status's message when its status is an error.
    pub error: Option<String>,
    pub attributes: Vec<(String, String)>,
    pub events: Vec<SpanEvent>,
}

/// What one heap allocation costs beyond its bytes: the allocator's
/// header and rounding.
const ALLOCATION: usize = 32;

impl Span {
    /// What it takes in memory, counted high: every string and list is an
    /// allocation of its own, and the ring's slot may be half empty.
    fn size(&self) -> usize {
        let text = |s: &str| s.len() + ALLOCATION;
        let pairs = |pairs: &[(String, String)]| {
            ALLOCATION
                + pairs
                    .iter()
                    .map(|(k, v)| std::mem::size_of::<(String, String)>() + text(k) + text(v))
                    .sum::<usize>()
        };
        2 * std::mem::size_of::<Span>()
            + text(&self.trace_id)
            + text(&self.span_id)
            + self.parent_span_id.as_deref().map_or(0, text)
            + text(&self.service)
            + text(&self.name)
            + self.error.as_deref().map_or(0, text)
            + pairs(&self.attributes)
            + ALLOCATION
            + self
                .events
                .iter()
                .map(|e| std::mem::size_of::<SpanEvent>() + text(&e.name) + pairs(&e.attributes))
                .sum::<usize>()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SpanEvent {
    pub name: String,
    pub time_unix_ns: u64,
    pub attributes: Vec<(String, String)>,
}

/// A log record a service sent.
#[derive(Debug, Clone)]
pub struct LogRecord {
    pub service: String,
    pub severity: String,
    pub body: String,
    pub attributes: Vec<(String, String)>,
    pub trace_id: Option<String>,
}

impl LogRecord {
    /// The record as a log line: severity, body, attributes, trace id.
    fn line(&self) -> String {
        let mut line = format!("{} {}", self.severity, self.body);
        for (key, value) in &self.attributes {
            line.push_str(&format!(" {key}={value}"));
        }
        if let Some(trace_id) = &self.trace_id {
            line.push_str(&format!(" trace_id={trace_id}"));
        }
        line
    }
}

/// A metric's newest data point, as a service sent it.
#[derive(Debug, Clone)]
pub struct MetricPoint {
    pub service: String,
    pub name: String,
    pub unit: String,
    pub value: MetricValue,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum MetricValue {
    Gauge {
        value: f64,
    },
    Sum {
        value: f64,
    },
    /// Quantiles are the upper bounds of the buckets that hold them.
    Histogram {
        count: u64,
        p50: Option<f64>,
        p99: Option<f64>,
    },
}

impl MetricValue {
    fn gauge(value: f64) -> MetricValue {
        MetricValue::Gauge { value }
    }

    fn sum(value: f64) -> MetricValue {
        MetricValue::Sum { value }
    }
}

/// A metric as the page shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Metric {
    pub service: String,
    pub name: String,
    pub unit: String,
    pub value: MetricValue,
    /// When it last came (Unix milliseconds).
    pub updated_ms: u64,
}

impl Telemetry {
    /// A store whose spans take at most `budget` bytes; log records go to
    /// `logs`.
    pub fn new(logs: Logs, budget: usize) -> Telemetry {
        Telemetry {
            spans: Mutex::default(),
            metrics: Mutex::default(),
            taken: Mutex::new((Instant::now(), BTreeMap::new())),
            rate: RATE,
            logs,
            budget,
        }
    }

    /// The store with a rate other than [`RATE`].
    #[cfg(test)]
    pub fn with_rate(mut self, rate: usize) -> Telemetry {
        self.rate = rate;
        self
    }

    /// Whether `service` may send `bytes` more this second.
    pub fn admit(&self, service: &str, bytes: usize) -> bool {
        let mut taken = self.taken.lock().unwrap_or_else(|e| e.into_inner());
        if taken.0.elapsed().as_secs() >= 1 {
            *taken = (Instant::now(), BTreeMap::new());
        }
        let taken = taken.1.entry(service.to_owned()).or_insert(0);
        if *taken > self.rate {
            return false;
        }
        *taken += bytes;
        true
    }

    /// Keeps `spans`, the oldest going past the budget.
    pub fn add_spans(&self, spans: Vec<Span>) {
        let mut kept = self.spans.lock().unwrap_or_else(|e| e.into_inner());
        for span in spans {
            kept.bytes += span.size();
            kept.spans.push_back(span);
        }
        while kept.bytes > self.budget {
            let Some(oldest) = kept.spans.pop_front() else {
                break;
            };
            kept.bytes -= oldest.size();
        }
    }

    /// The spans of trace `trace_id` (32 hex digits), by start.
    pub fn spans(&self, trace_id: &str) -> Vec<Span> {
        let trace_id = trace_id.to_ascii_lowercase();
        let kept = self.spans.lock().unwrap_or_else(|e| e.into_inner());
        let mut found: Vec<Span> = kept.spans.iter().filter(|s| s.trace_id == trace_id).cloned().collect();
        found.sort_by_key(|s| s.start_unix_ns);
        found
    }

    /// How many spans are kept, and their bytes.
    pub fn kept(&self) -> (usize, usize) {
        let kept = self.spans.lock().unwrap_or_else(|e| e.into_inner());
        (kept.spans.len(), kept.bytes)
    }

    /// Puts `records` in the logs, each service's as one batch.
    pub fn add_logs(&self, records: Vec<LogRecord>) {
        let mut by_service: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for record in records {
            by_service
                .entry(record.service.clone())
                .or_default()
                .push(record.line());
        }
        for (service, lines) in by_service {
            let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
            self.logs.lines(&service, &lines);
        }
    }

    /// Keeps each metric's newest value.
    pub fn add_metrics(&self, points: Vec<MetricPoint>) {
        let now = crate::time::now_ms();
        let mut metrics = self.metrics.lock().unwrap_or_else(|e| e.into_inner());
        for point in points {
            metrics.insert(
                (point.service.clone(), point.name.clone()),
                Metric {
                    service: point.service,
                    name: point.name,
                    unit: point.unit,
                    value: point.value,
                    updated_ms: now,
                },
            );
        }
        while metrics.len() > MAX_METRICS {
            let oldest = metrics
                .iter()
                .min_by_key(|(_, m)| m.updated_ms)
                .map(|(key, _)| key.clone())
                .expect("more than none");
            metrics.remove(&oldest);
        }
    }

    /// Every metric's newest value, the most recently updated first.
    pub fn metrics(&self) -> Vec<Metric> {
        let metrics = self.metrics.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<Metric> = metrics.values().cloned().collect();
        all.sort_by(|a, b| b.updated_ms.cmp(&a.updated_ms).then_with(|| a.name.cmp(&b.name)));
        all
    }
}

#[cfg(test)]
mod tests;
