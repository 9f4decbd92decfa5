//! The OTLP endpoint in process: each signal over OTLP/HTTP (protobuf,
//! JSON, gzip) and OTLP/gRPC, what bad input gets, and the budget.

use std::io::Write;
use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, span};
use prost::Message;
use tokio_util::sync::CancellationToken;

use super::Telemetry;
use crate::logs::{Echo, Logs};

const TRACE: [u8; 16] = [
    0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36,
];
const TRACE_HEX: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

fn string(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
        ..KeyValue::default()
    }
}

fn resource(service: &str) -> Option<Resource> {
    Some(Resource {
        attributes: vec![string("service.name", service)],
        ..Resource::default()
    })
}

/// One server span of `service`, child of span 00f067aa0ba902b7.
fn traces(service: &str, name: &str) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: resource(service),
            scope_spans: vec![ScopeSpans {
                spans: vec![Span {
                    trace_id: TRACE.to_vec(),
                    span_id: vec![1, 2, 3, 4, 5, 6, 7, 8],
                    parent_span_id: vec![0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7],
                    name: name.to_owned(),
                    kind: span::SpanKind::Server as i32,
                    start_time_unix_nano: 1_000,
                    end_time_unix_nano: 2_000,
                    attributes: vec![
                        string("http.route", "/orders"),
                        string("http.request.header.authorization", "Bearer secret-token-value"),
                    ],
                    ..Span::default()
                }],
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        }],
    }
}

/// A mesh's telemetry store, its endpoint serving, and its logs.
async fn endpoint() -> (
    std::net::SocketAddr,
    Arc<Telemetry>,
    Logs,
    tempfile::TempDir,
    CancellationToken,
) {
    endpoint_at_rate(super::RATE).await
}

/// [`endpoint`], a service slowed past `rate` bytes a second.
async fn endpoint_at_rate(
    rate: usize,
) -> (
    std::net::SocketAddr,
    Arc<Telemetry>,
    Logs,
    tempfile::TempDir,
    CancellationToken,
) {
    let dir = tempfile::tempdir().unwrap();
    let logs = Logs::new(dir.path(), &["orders".to_owned()], Default::default(), Echo::Off).unwrap();
    let telemetry = Arc::new(Telemetry::new(logs.clone(), 1 << 20).with_rate(rate));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(super::serve(listener, Arc::clone(&telemetry), shutdown.clone()));
    (addr, telemetry, logs, dir, shutdown)
}

/// POSTs `body` to `path` over HTTP/1 with `headers`: status and body.
async fn post(addr: std::net::SocketAddr, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> (StatusCode, Bytes) {
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut request = Request::post(format!("http://{addr}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = client
        .request(request.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .unwrap();
    let status = response.status();
    (status, response.into_body().collect().await.unwrap().to_bytes())
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

#[tokio::test]
async fn spans_come_over_http_as_protobuf_json_and_gzip_and_keep_their_parents() {
    let (addr, telemetry, _logs, _dir, _shutdown) = endpoint().await;
    let protobuf = [("content-type", "application/x-protobuf")];
    let (status, _) = post(addr, "/v1/traces", &protobuf, traces("orders", "proto").encode_to_vec()).await;
    assert_eq!(status, StatusCode::OK);
    let zipped = gzip(&traces("orders", "zipped").encode_to_vec());
    let headers = [("content-type", "application/x-protobuf"), ("content-encoding", "gzip")];
    assert_eq!(post(addr, "/v1/traces", &headers, zipped).await.0, StatusCode::OK);
    // OTLP/JSON: hex ids, lowerCamelCase, int64 as strings.
    let json = serde_json::json!({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "orders"}}]},
        "scopeSpans": [{"spans": [{
            "traceId": TRACE_HEX, "spanId": "0102030405060709", "parentSpanId": "0102030405060708",
            "name": "json", "kind": 1, "startTimeUnixNano": "3000", "endTimeUnixNano": "4000",
            "status": {"code": 2, "message": "the card was declined"}
        }]}]
    }]});
    let (status, body) = post(
        addr,
        "/v1/traces",
        &[("content-type", "application/json")],
        json.to_string().into_bytes(),
    )
    .await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"{}"[..]));

    let spans = telemetry.spans(TRACE_HEX);
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["proto", "zipped", "json"]);
    assert_eq!(spans[0].parent_span_id.as_deref(), Some("00f067aa0ba902b7"));
    assert_eq!((spans[0].service.as_str(), spans[0].kind), ("orders", "server"));
    assert_eq!(spans[2].parent_span_id.as_deref(), Some("0102030405060708"));
    assert_eq!(spans[2].error.as_deref(), Some("the card was declined"));
    assert!(telemetry.spans("0af7651916cd43dd8448eb211c80319c").is_empty());
}

#[tokio::test]
async fn every_signal_comes_over_grpc_too() {
    let (addr, telemetry, logs, _dir, _shutdown) = endpoint().await;
    let call = |path, message| grpc_export(addr, path, message);
    let traces = traces("orders", "over grpc").encode_to_vec();
    let status = call("/opentelemetry.proto.collector.trace.v1.TraceService/Export", traces).await;
    assert_eq!(status, "0");
    assert_eq!(telemetry.spans(TRACE_HEX)[0].name, "over grpc");

    let log = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: resource("orders"),
            scope_logs: vec![ScopeLogs {
                log_records: vec![LogRecord {
                    severity_number: 13,
                    body: Some(AnyValue {
                        value: Some(any_value::Value::StringValue("payment slow".to_owned())),
                    }),
                    attributes: vec![string("order", "7")],
                    trace_id: TRACE.to_vec(),
                    ..LogRecord::default()
                }],
                ..ScopeLogs::default()
            }],
            ..ResourceLogs::default()
        }],
    };
    let status = call(
        "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
        log.encode_to_vec(),
    )
    .await;
    assert_eq!(status, "0");
    let lines = logs.recent(&["orders".to_owned()], Some(TRACE_HEX), 0, 10);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0].text, format!("WARN payment slow order=7 trace_id={TRACE_HEX}"));

    let metrics = ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: resource("orders"),
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![Metric {
                    name: "orders.open".to_owned(),
                    unit: "{order}".to_owned(),
                    data: Some(opentelemetry_proto::tonic::metrics::v1::metric::Data::Gauge(Gauge {
                        data_points: vec![NumberDataPoint {
                            time_unix_nano: 5,
                            value: Some(opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsInt(3)),
                            ..NumberDataPoint::default()
                        }],
                    })),
                    ..Metric::default()
                }],
                ..ScopeMetrics::default()
            }],
            ..ResourceMetrics::default()
        }],
    };
    let path = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";
    assert_eq!(call(path, metrics.encode_to_vec()).await, "0");
    let all = serde_json::to_value(telemetry.metrics()).unwrap();
    assert_eq!(all[0]["name"], "orders.open");
    assert_eq!(all[0]["value"], serde_json::json!({"kind": "gauge", "value": 3.0}));

    // Garbage in a frame: INVALID_ARGUMENT, and the endpoint serves on.
    let path = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
    assert_eq!(call(path, vec![0xff; 9]).await, "3");
    assert_eq!(call(path, traces_again()).await, "0");
}

/// One OTLP/gRPC export of `message` to `path`: its `grpc-status`.
async fn grpc_export(addr: std::net::SocketAddr, path: &str, message: Vec<u8>) -> String {
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(&message);
    let request = Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from(framed)))
        .unwrap();
    let response = client.request(request).await.unwrap();
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().unwrap_or_default();
    trailers["grpc-status"].to_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_service_past_its_rate_is_told_to_slow_down_and_no_other_is() {
    let (addr, telemetry, _logs, _dir, _shutdown) = endpoint_at_rate(1).await;
    let protobuf = [("content-type", "application/x-protobuf")];
    let export = |service, name| traces(service, name).encode_to_vec();
    assert_eq!(
        post(addr, "/v1/traces", &protobuf, export("orders", "first")).await.0,
        StatusCode::OK
    );

    // Past its rate this second: 429 with when to try again, which
    // exporters honour; over gRPC RESOURCE_EXHAUSTED, which they retry.
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let request = Request::post(format!("http://{addr}/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .body(Full::new(Bytes::from(export("orders", "second"))))
        .unwrap();
    let answer = client.request(request).await.unwrap();
    assert_eq!(answer.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(answer.headers()["retry-after"], "1");
    let body = answer.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("slow down"), "{body:?}");
    let path = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
    assert_eq!(grpc_export(addr, path, export("orders", "third")).await, "8");

    // Another service is not slowed for it.
    assert_eq!(
        post(addr, "/v1/traces", &protobuf, export("payments", "other")).await.0,
        StatusCode::OK
    );
    let names: Vec<String> = telemetry.spans(TRACE_HEX).into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["first", "other"]);
}

fn traces_again() -> Vec<u8> {
    traces("orders", "again").encode_to_vec()
}

#[tokio::test]
async fn bad_input_is_refused_in_words_and_loses_nothing() {
    let (addr, telemetry, _logs, _dir, _shutdown) = endpoint().await;
    let good = traces("orders", "kept").encode_to_vec();
    post(addr, "/v1/traces", &[], good).await;
    let protobuf = [("content-type", "application/x-protobuf")];
    let (status, body) = post(addr, "/v1/traces", &protobuf, b"\xff\xff\xff garbage".to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        String::from_utf8_lossy(&body).contains("it is no OTLP protobuf"),
        "{body:?}"
    );
    let (status, body) = post(
        addr,
        "/v1/logs",
        &[("content-type", "application/json")],
        b"{\"resourceLogs\": 5}".to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        String::from_utf8_lossy(&body).contains("it is no OTLP JSON"),
        "{body:?}"
    );
    let zipped_garbage = [("content-encoding", "gzip")];
    let (status, body) = post(addr, "/v1/traces", &zipped_garbage, b"not gzip".to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&body).contains("gzip"), "{body:?}");
    let (status, _) = post(addr, "/v2/elsewhere", &[], Vec::new()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(telemetry.spans(TRACE_HEX).len(), 1, "what came before is kept");
}

#[test]
fn spans_past_the_budget_go_oldest_first_and_secret_attributes_are_masked() {
    let dir = tempfile::tempdir().unwrap();
    let logs = Logs::new(dir.path(), &[], Default::default(), Echo::Off).unwrap();
    let telemetry = Telemetry::new(logs, 64 * 1024);
    for i in 0..2_000 {
        telemetry.add_spans(super::otlp::spans(traces("orders", &format!("span {i}"))));
    }
    let (count, bytes) = telemetry.kept();
    assert!(bytes <= 64 * 1024 && count > 10, "{count} spans, {bytes} bytes");
    let spans = telemetry.spans(TRACE_HEX);
    assert_eq!(spans.last().unwrap().name, "span 1999", "the newest are kept");
    let masker = crate::inspector::Masker::new(&["authorization".to_owned()]);
    let mut attributes = spans[0].attributes.clone();
    masker.attributes(&mut attributes);
    assert_eq!(attributes[0], ("http.route".to_owned(), "/orders".to_owned()));
    assert!(!attributes[1].1.contains("secret"), "{attributes:?}");
}

#[test]
fn metrics_past_their_count_go_least_recently_updated_first() {
    let dir = tempfile::tempdir().unwrap();
    let logs = Logs::new(dir.path(), &[], Default::default(), Echo::Off).unwrap();
    let telemetry = Telemetry::new(logs, 1 << 20);
    let point = |name: String| super::MetricPoint {
        service: "orders".to_owned(),
        name,
        unit: String::new(),
        value: super::MetricValue::gauge(1.0),
    };
    telemetry.add_metrics((0..super::MAX_METRICS).map(|i| point(format!("m{i}"))).collect());
    telemetry.add_metrics(vec![point("newest".to_owned())]);
    let all = telemetry.metrics();
    assert_eq!(all.len(), super::MAX_METRICS);
    assert!(all.iter().any(|m| m.name == "newest"));
}
