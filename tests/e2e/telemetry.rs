//! Services' own telemetry: a Rust service (`tracing`, tracing-opentelemetry
//! and opentelemetry-otlp from crates.io) and a Python one (OpenTelemetry's
//! SDK from PyPI) call each other and send their spans, logs and metrics
//! over OTLP/HTTP and OTLP/gRPC to the endpoint devmesh gave them in
//! `OTEL_EXPORTER_OTLP_ENDPOINT`; what they send joins the hops their front
//! ports captured.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message as _;

use crate::browser::Browser;
use crate::harness::{DEADLINE, Mesh, api_get, exchanges, fixture, get, read_json, text};
use crate::inspector::page;

/// Asks `ask` until it gives something, for up to the deadline.
fn eventually<T>(what: &str, ask: impl Fn() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(found) = ask() {
            return found;
        }
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_rust_and_a_python_services_own_telemetry_joins_the_captured_trace() {
    let mesh = Mesh::start(fixture("otel"), &[], &["spanned", "traced"]);

    // Where services export, and whose own setting wins.
    let ps = text(&mesh.cli(&["ps"]));
    assert!(ps.contains("otlp: http://127.0.0.1:"), "{ps}");
    assert!(
        ps.contains("traced: its own OTEL_RESOURCE_ATTRIBUTES (devmesh.toml) wins"),
        "{ps}"
    );

    // spanned (Rust) calls traced (Python), which calls spanned back.
    let (status, body) = get(mesh.front("spanned"), "/checkout");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, "spanned got: traced got: stock 3");

    // The front ports' three hops, in one trace.
    let hop = |service: &str, path: &str, trace: Option<&str>| {
        exchanges(&mesh, 1, |e| {
            e["service"] == service && e["path"] == path && trace.is_none_or(|t| e["trace_id"] == t)
        })
        .remove(0)
    };
    let to_spanned = hop("spanned", "/checkout", None);
    let trace = to_spanned["trace_id"].as_str().expect("a trace id").to_owned();
    let to_traced = hop("traced", "/price", Some(&trace));
    let back_to_spanned = hop("spanned", "/stock", Some(&trace));

    // Both services' spans, each under its parent: a server span under the
    // hop that reached it, a client span over the hop it made.
    let spans = eventually("both services' six spans", || {
        let spans = api_get(&mesh, &format!("/api/spans?trace={trace}"));
        (spans.as_array()?.len() >= 6).then_some(spans)
    });
    let named = |service: &str, name: &str| {
        spans
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["service"] == service && s["name"] == name)
            .unwrap_or_else(|| panic!("no span `{name}` of {service}: {spans}"))
            .clone()
    };
    let checkout = named("spanned", "GET /checkout");
    let call_traced = named("spanned", "call traced");
    let price = named("traced", "GET /price");
    let call_spanned = named("traced", "call spanned");
    let stock = named("spanned", "GET /stock");
    let count = named("spanned", "count stock");
    for span in [&checkout, &price, &stock] {
        assert_eq!(span["kind"], "server", "{span}");
    }
    for (child, parent) in [
        (&checkout, &to_spanned),
        (&call_traced, &checkout),
        (&to_traced, &call_traced),
        (&price, &to_traced),
        (&call_spanned, &price),
        (&back_to_spanned, &call_spanned),
        (&stock, &back_to_spanned),
        (&count, &stock),
    ] {
        assert!(parent["span_id"].as_str().is_some_and(|id| id.len() == 16), "{parent}");
        assert_eq!(child["parent_span_id"], parent["span_id"], "{spans}");
    }

    // Their log records (spanned's over gRPC, traced's over HTTP), with the
    // trace, beside the lines services print.
    let logs = eventually("both services' log records", || {
        let logs = text(&mesh.cli(&["logs", "--trace", &trace]));
        (logs.contains("spanned | INFO checked out") && logs.contains("traced | WARN priced")).then_some(logs)
    });
    assert!(logs.contains("order=7"), "{logs}");
    let refused = text(&mesh.cli(&["logs", "--trace", "not-a-trace"]));
    assert!(refused.contains("is no trace id"), "{refused}");

    // Their counters' newest values.
    for (service, name) in [("spanned", "orders"), ("traced", "prices")] {
        let metric = eventually(&format!("{service}'s counter"), || {
            let metrics = api_get(&mesh, "/api/metrics");
            metrics.as_array()?.iter().find(|m| m["name"] == name).cloned()
        });
        assert_eq!(metric["service"], service);
        assert_eq!(metric["value"]["kind"], "sum");
        assert_eq!(metric["value"]["value"].as_f64(), Some(1.0), "{metric}");
    }

    // The page: the trace's waterfall holds the three hops and the six
    // spans, each under its parent; the metrics view has both counters.
    let mut browser = Browser::open(&page(&mesh));
    let id = to_spanned["id"].as_u64().unwrap();
    browser.wait_until(
        &format!("document.querySelector('#rows tr[data-id=\"{id}\"]')"),
        "the exchange",
    );
    browser.eval(&format!("document.querySelector('#rows tr[data-id=\"{id}\"]').click()"));
    browser.eval("document.dispatchEvent(new KeyboardEvent('keydown', {key: 't'}))");
    let rows = browser.wait_until(
        "[...document.querySelectorAll('#detail-body .bar-row')].length === 9 && \
         [...document.querySelectorAll('#detail-body .bar-row')].map(r => r.innerText.replace(/\\s+/g, ' ') + ' @' + r.firstElementChild.style.paddingLeft)",
        "the waterfall with the hops and the spans",
    );
    let rows: Vec<String> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();
    let expected = [
        "→ spanned GET /checkout",
        "spanned · GET /checkout server",
        "spanned · call traced client",
        "spanned → traced GET /price",
        "traced · GET /price server",
        "traced · call spanned client",
        "traced → spanned GET /stock",
        "spanned · GET /stock server",
        "spanned · count stock",
    ];
    for (depth, (row, text)) in rows.iter().zip(expected).enumerate() {
        assert!(
            row.contains(text) && row.ends_with(&format!("@{}px", depth * 14)),
            "row {depth} is not `{text}`: {rows:?}"
        );
    }
    let shot = browser.screenshot("telemetry-trace");
    browser.eval("document.dispatchEvent(new KeyboardEvent('keydown', {key: '4'}))");
    browser.wait_until(
        "['orders', 'prices'].every(m => document.getElementById('metric-rows').innerText.includes(m))",
        "both counters in the metrics view",
    );
    let metrics_shot = browser.screenshot("telemetry-metrics");
    eprintln!("screenshots: {} {}", shot.display(), metrics_shot.display());
}

/// What `inspector.memory` is set to in the flood: small, so that the
/// flood passes through it many times over.
const FLOOD_CAP: u64 = 8 << 20;
/// The supervisor's memory beyond the cap that a flood may take: each
/// connection's buffers and the export being decoded, the log buffer, at
/// most 10,000 metrics. (The flood sends about ten times the cap in spans
/// alone: kept, they would pass it.)
const FLOOD_OVERHEAD: u64 = 48 << 20;

/// A service that exports as fast as it can for 20 s over two keep-alive
/// connections, taking no 429 for an answer (new spans, log records and
/// metrics, over OTLP/HTTP protobuf): the supervisor's memory stays under
/// `inspector.memory` plus a fixed overhead, and the other service answers
/// every request meanwhile.
#[test]
fn a_service_flooding_otlp_keeps_the_supervisor_under_its_cap_and_fails_no_other_request() {
    let mesh = Mesh::start_with_env(
        fixture("otel"),
        &["spanned"],
        &[("DEVMESH_INSPECTOR__MEMORY", &FLOOD_CAP.to_string())],
        &["spanned"],
    );
    let control = read_json(&mesh.state().join("control.json"));
    let otlp: SocketAddr = control["otlp"].as_str().expect("an OTLP endpoint").parse().unwrap();
    let (supervisor, front) = (mesh.supervisor_pid(), mesh.front("spanned"));
    let timed_gets = |until: Instant| {
        let mut took = Vec::new();
        while Instant::now() < until {
            let start = Instant::now();
            let (status, body) = get(front, "/stock");
            assert_eq!((status, body.as_str()), (200, "stock 3"), "a request during the flood");
            took.push(start.elapsed());
        }
        took
    };
    let quiet = timed_gets(Instant::now() + Duration::from_secs(2));
    let before = rss_kib(supervisor) << 10;

    let until = Instant::now() + Duration::from_secs(20);
    let (taken, slowed, most, during) = std::thread::scope(|s| {
        let floods: Vec<_> = (0..2u64).map(|n| s.spawn(move || flood(otlp, n, until))).collect();
        let sampler = s.spawn(|| {
            let mut most = 0;
            while Instant::now() < until {
                most = most.max(rss_kib(supervisor) << 10);
                std::thread::sleep(Duration::from_millis(50));
            }
            most
        });
        let during = timed_gets(until);
        let (taken, slowed) = floods
            .into_iter()
            .map(|f| f.join().unwrap())
            .fold((0, 0), |(t, s), (taken, slowed)| (t + taken, s + slowed));
        (taken, slowed, sampler.join().unwrap(), during)
    });
    let p99 = |mut took: Vec<Duration>| {
        took.sort();
        took[took.len() * 99 / 100]
    };
    eprintln!(
        "flood: {taken} exports taken, {slowed} slowed; supervisor RSS {} -> {} MiB (cap {} MiB); \
         {} GETs during it, p99 {:?} (before: {:?})",
        before >> 20,
        most >> 20,
        FLOOD_CAP >> 20,
        during.len(),
        p99(during.clone()),
        p99(quiet)
    );
    // (A test's supervisor is a debug build, too slow to be sent past its
    // rate: the unit tests show the slowing, the benchmark the figures.)
    assert!(taken > 0, "the flood was never taken");
    assert!(
        most <= before + FLOOD_CAP + FLOOD_OVERHEAD,
        "the supervisor grew from {before} to {most} bytes"
    );
    // After it, spanned's own spans are taken and joined as before.
    assert_eq!(get(front, "/stock?after").0, 200);
    let hop = exchanges(&mesh, 1, |e| e["service"] == "spanned" && e["path"] == "/stock?after").remove(0);
    let trace = hop["trace_id"].as_str().unwrap().to_owned();
    eventually("spanned's span after the flood", || {
        let spans = api_get(&mesh, &format!("/api/spans?trace={trace}"));
        spans
            .as_array()?
            .iter()
            .find(|s| s["parent_span_id"] == hop["span_id"])
            .cloned()
    });
}

/// Exports as fast as one connection can until `until`, ignoring 429s:
/// how many exports were taken, and how many slowed.
fn flood(otlp: SocketAddr, n: u64, until: Instant) -> (u64, u64) {
    let mut stream = TcpStream::connect(otlp).expect("the OTLP endpoint accepts");
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let (mut taken, mut slowed) = (0, 0);
    let mut round = 0;
    while Instant::now() < until {
        round += 1;
        for (path, body) in [
            ("/v1/traces", flood_spans(n, round)),
            ("/v1/logs", flood_logs(n, round)),
            ("/v1/metrics", flood_metrics(round)),
        ] {
            match post(&mut stream, otlp, path, &body) {
                200 => taken += 1,
                429 => slowed += 1,
                status => panic!("{path} answered {status}"),
            }
        }
    }
    (taken, slowed)
}

fn flood_resource() -> Option<Resource> {
    Some(Resource {
        attributes: vec![attribute("service.name", "flood")],
        ..Resource::default()
    })
}

fn attribute(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
        ..KeyValue::default()
    }
}

/// 512 new spans, each in a trace of its own.
fn flood_spans(n: u64, round: u64) -> Vec<u8> {
    let spans = (0..512u64)
        .map(|i| {
            let id = (n << 48) | (round << 10) | i;
            Span {
                trace_id: u128::from(id + 1).to_be_bytes().to_vec(),
                span_id: (id + 1).to_be_bytes().to_vec(),
                name: format!("flood {id}"),
                kind: 2,
                start_time_unix_nano: 1_700_000_000_000_000_000 + id,
                end_time_unix_nano: 1_700_000_000_000_500_000 + id,
                attributes: vec![
                    attribute("http.route", "/flood"),
                    attribute("flood.round", &round.to_string()),
                ],
                ..Span::default()
            }
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: flood_resource(),
            scope_spans: vec![ScopeSpans {
                spans,
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        }],
    }
    .encode_to_vec()
}

/// 128 new log records.
fn flood_logs(n: u64, round: u64) -> Vec<u8> {
    let log_records = (0..128u64)
        .map(|i| LogRecord {
            severity_number: 13,
            severity_text: "WARN".to_owned(),
            body: Some(AnyValue {
                value: Some(any_value::Value::StringValue(format!("flood {n} {round} {i}"))),
            }),
            ..LogRecord::default()
        })
        .collect();
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: flood_resource(),
            scope_logs: vec![ScopeLogs {
                log_records,
                ..ScopeLogs::default()
            }],
            ..ResourceLogs::default()
        }],
    }
    .encode_to_vec()
}

/// 64 gauges with new names each round (past the 10,000 kept).
fn flood_metrics(round: u64) -> Vec<u8> {
    let metrics = (0..64u64)
        .map(|i| Metric {
            name: format!("flood.{}", (round * 64 + i) % 50_000),
            data: Some(metric::Data::Gauge(Gauge {
                data_points: vec![NumberDataPoint {
                    value: Some(number_data_point::Value::AsDouble(i as f64)),
                    ..NumberDataPoint::default()
                }],
            })),
            ..Metric::default()
        })
        .collect();
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: flood_resource(),
            scope_metrics: vec![ScopeMetrics {
                metrics,
                ..ScopeMetrics::default()
            }],
            ..ResourceMetrics::default()
        }],
    }
    .encode_to_vec()
}

/// POSTs `body` as protobuf on a kept connection: the answer's status.
fn post(stream: &mut TcpStream, otlp: SocketAddr, path: &str, body: &[u8]) -> u16 {
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nhost: {otlp}\r\ncontent-type: application/x-protobuf\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    stream.write_all(body).unwrap();
    let mut reader = BufReader::new(&mut *stream);
    let (mut status, mut length) = (0, 0);
    let mut line = String::new();
    loop {
        line.clear();
        reader.read_line(&mut line).expect("an answer");
        let header = line.trim_end().to_ascii_lowercase();
        if header.is_empty() {
            break;
        }
        if let Some(code) = header.strip_prefix("http/1.1 ") {
            status = code[..3].parse().unwrap();
        } else if let Some(value) = header.strip_prefix("content-length:") {
            length = value.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    assert!(reader.buffer().is_empty(), "an answer to one request at a time");
    status
}

/// The resident memory of process `pid`, in KiB, as `ps` shows it.
fn rss_kib(pid: u32) -> u64 {
    let ps = std::process::Command::new("ps")
        .args(["-o", "rss=", "-p", &pid.to_string()])
        .output()
        .expect("ps runs");
    String::from_utf8_lossy(&ps.stdout).trim().parse().unwrap_or(0)
}
