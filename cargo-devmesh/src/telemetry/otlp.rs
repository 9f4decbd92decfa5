//! OTLP's three export requests, decoded with the ecosystem's types
//! (`opentelemetry-proto`'s prost messages, and their serde form for
//! OTLP/JSON), gzip undone, and turned into what the store keeps.

use std::io::Read;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};
use opentelemetry_proto::tonic::resource::v1::Resource;

use super::{LogRecord, MetricPoint, MetricValue, Span, SpanEvent};

/// The largest request body taken, once unzipped.
pub const MAX_BODY: usize = 16 * 1024 * 1024;

/// How a request's body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Protobuf,
    Json,
}

/// Why a request could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("its gzip could not be undone: {0}")]
    Gzip(std::io::Error),
    #[error("it is larger than {} MiB unzipped", MAX_BODY >> 20)]
    TooLarge,
    #[error("it is no OTLP protobuf: {0}")]
    Protobuf(#[from] prost::DecodeError),
    #[error("it is no OTLP JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// `body` unzipped when `gzip`, then decoded as `encoding` says; with the
/// unzipped size, which is what a service's rate is counted in.
pub fn decode<T>(body: &[u8], gzip: bool, encoding: Encoding) -> Result<(T, usize), DecodeError>
where
    T: prost::Message + Default + serde::de::DeserializeOwned,
{
    let unzipped;
    let body = match gzip {
        true => {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(body)
                .take(MAX_BODY as u64 + 1)
                .read_to_end(&mut out)
                .map_err(DecodeError::Gzip)?;
            if out.len() > MAX_BODY {
                return Err(DecodeError::TooLarge);
            }
            unzipped = out;
            &unzipped[..]
        }
        false => body,
    };
    let decoded = match encoding {
        Encoding::Protobuf => T::decode(body)?,
        Encoding::Json => serde_json::from_slice(body)?,
    };
    Ok((decoded, body.len()))
}

/// The spans of a trace export, each with its service's name.
pub fn spans(request: ExportTraceServiceRequest) -> Vec<Span> {
    let mut spans = Vec::new();
    for resource in request.resource_spans {
        let service = service_name(resource.resource.as_ref());
        for scope in resource.scope_spans {
            for span in scope.spans {
                let status = span
                    .status
                    .as_ref()
                    .filter(|s| s.code == 2)
                    .map(|s| match s.message.is_empty() {
                        true => "error".to_owned(),
                        false => s.message.clone(),
                    });
                spans.push(Span {
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: (!span.parent_span_id.is_empty()).then(|| hex(&span.parent_span_id)),
                    service: service.clone(),
                    name: span.name,
                    kind: kind(span.kind),
                    start_unix_ns: span.start_time_unix_nano,
                    end_unix_ns: span.end_time_unix_nano,
                    error: status,
                    attributes: attributes(&span.attributes),
                    events: span
                        .events
                        .into_iter()
                        .map(|event| SpanEvent {
                            name: event.name,
                            time_unix_ns: event.time_unix_nano,
                            attributes: attributes(&event.attributes),
                        })
                        .collect(),
                });
            }
        }
    }
    spans
}

/// The log records of a logs export.
pub fn log_records(request: ExportLogsServiceRequest) -> Vec<LogRecord> {
    let mut records = Vec::new();
    for resource in request.resource_logs {
        let service = service_name(resource.resource.as_ref());
        for scope in resource.scope_logs {
            for record in scope.log_records {
                let severity = match record.severity_text.is_empty() {
                    false => record.severity_text.clone(),
                    true => severity(record.severity_number).to_owned(),
                };
                records.push(LogRecord {
                    service: service.clone(),
                    severity,
                    body: record.body.as_ref().map(text).unwrap_or_default(),
                    attributes: attributes(&record.attributes),
                    trace_id: (!record.trace_id.is_empty() && record.trace_id.iter().any(|&b| b != 0))
                        .then(|| hex(&record.trace_id)),
                });
            }
        }
    }
    records
}

/// The newest data point of each metric in a metrics export.
pub fn metric_points(request: ExportMetricsServiceRequest) -> Vec<MetricPoint> {
    let mut points = Vec::new();
    for resource in request.resource_metrics {
        let service = service_name(resource.resource.as_ref());
        for scope in resource.scope_metrics {
            for metric in scope.metrics {
                let value = match &metric.data {
                    Some(metric::Data::Gauge(gauge)) => newest_number(&gauge.data_points).map(MetricValue::gauge),
                    Some(metric::Data::Sum(sum)) => newest_number(&sum.data_points).map(MetricValue::sum),
                    Some(metric::Data::Histogram(histogram)) => histogram
                        .data_points
                        .iter()
                        .max_by_key(|p| p.time_unix_nano)
                        .map(|p| MetricValue::Histogram {
                            count: p.count,
                            p50: quantile(&p.explicit_bounds, &p.bucket_counts, p.count, 0.5),
                            p99: quantile(&p.explicit_bounds, &p.bucket_counts, p.count, 0.99),
                        }),
                    Some(metric::Data::ExponentialHistogram(histogram)) => histogram
                        .data_points
                        .iter()
                        .max_by_key(|p| p.time_unix_nano)
                        .map(|p| MetricValue::Histogram {
                            count: p.count,
                            p50: None,
                            p99: None,
                        }),
                    Some(metric::Data::Summary(_)) | None => None,
                };
                if let Some(value) = value {
                    points.push(MetricPoint {
                        service: service.clone(),
                        name: metric.name,
                        unit: metric.unit,
                        value,
                    });
                }
            }
        }
    }
    points
}

fn newest_number(points: &[opentelemetry_proto::tonic::metrics::v1::NumberDataPoint]) -> Option<f64> {
    let newest = points.iter().max_by_key(|p| p.time_unix_nano)?;
    match newest.value? {
        number_data_point::Value::AsDouble(value) => Some(value),
        number_data_point::Value::AsInt(value) => Some(value as f64),
    }
}

/// The bound of the bucket that holds quantile `q` of a histogram with
/// explicit `bounds` (the last bucket has none: its lower bound is said).
fn quantile(bounds: &[f64], counts: &[u64], total: u64, q: f64) -> Option<f64> {
    if total == 0 {
        return None;
    }
    let rank = (q * total as f64).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, count) in counts.iter().enumerate() {
        seen += count;
        if seen >= rank {
            return bounds.get(i).or_else(|| bounds.last()).copied();
        }
    }
    bounds.last().copied()
}

/// A resource's `service.name`, as OTLP names a service (devmesh sets it
/// to the service's name); one that is no name devmesh could give is
/// `unknown_service`, as OTLP says.
fn service_name(resource: Option<&Resource>) -> String {
    resource
        .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
        .and_then(|kv| kv.value.as_ref())
        .map(text)
        .filter(|name| devmesh::name::validate(name).is_ok())
        .unwrap_or_else(|| "unknown_service".to_owned())
}

fn attributes(attributes: &[KeyValue]) -> Vec<(String, String)> {
    attributes
        .iter()
        .map(|kv| (kv.key.clone(), kv.value.as_ref().map(text).unwrap_or_default()))
        .collect()
}

/// A value as text: strings as they are, the rest as JSON would have them.
fn text(value: &AnyValue) -> String {
    match &value.value {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::BytesValue(bytes)) => hex(bytes),
        Some(any_value::Value::ArrayValue(array)) => {
            let items: Vec<String> = array.values.iter().map(text).collect();
            format!("[{}]", items.join(", "))
        }
        Some(any_value::Value::KvlistValue(list)) => {
            let items: Vec<String> = list
                .values
                .iter()
                .map(|kv| format!("{}={}", kv.key, kv.value.as_ref().map(text).unwrap_or_default()))
                .collect();
            format!("{{{}}}", items.join(", "))
        }
        // An index into a profile's string table: no text of its own here.
        Some(any_value::Value::StringValueStrindex(_)) | None => String::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn kind(kind: i32) -> &'static str {
    match kind {
        1 => "internal",
        2 => "server",
        3 => "client",
        4 => "producer",
        5 => "consumer",
        _ => "unspecified",
    }
}

/// OTLP's severity numbers, by their ranges' names.
fn severity(number: i32) -> &'static str {
    match number {
        1..=4 => "TRACE",
        5..=8 => "DEBUG",
        9..=12 => "INFO",
        13..=16 => "WARN",
        17..=20 => "ERROR",
        21..=24 => "FATAL",
        _ => "LOG",
    }
}
