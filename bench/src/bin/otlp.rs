//! OTLP ingest (issue 24: ≥ 100,000 spans/s on one core; a span visible in
//! the API ≤ 50 ms after it was exported): the supervisor running the
//! shop's payments, and four keep-alive clients sending batches of 512
//! spans, first over OTLP/HTTP protobuf, then over OTLP/gRPC, 5 s each.
//! Figures: spans/s, the supervisor's CPU per 10,000 spans (and so spans/s
//! per core), and the median time from an export's answer to its span
//! showing in `GET /api/spans` (20 tries). Then a flood: the four clients
//! export new spans as fast as they can for 30 s, while `wrk` measures
//! payments' front port: the supervisor's largest RSS against its cap
//! (spans take a quarter of `inspector.memory`, 16 MiB by default), and
//! payments' p99 against before the flood.
//!
//! No peer is measured: an OpenTelemetry Collector is not installable on
//! this machine (no network but the package registries).
//!
//! Run: `cargo run --release -p devmesh-bench --bin otlp`

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use devmesh_bench::{Api, Guard, build, cpu_ticks, front_port, rss_kib, run_payments, wait_until_answers, wrk};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::body::Bytes;
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;

const BATCH: usize = 512;
const CLIENTS: usize = 4;
const RUN: Duration = Duration::from_secs(5);
const FLOOD: Duration = Duration::from_secs(30);

fn string(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
        ..KeyValue::default()
    }
}

/// `BATCH` spans of payments, in trace `trace` (`seed` varies the rest).
fn batch(trace: u128, seed: u64) -> ExportTraceServiceRequest {
    let spans = (0..BATCH as u64)
        .map(|i| Span {
            trace_id: trace.to_be_bytes().to_vec(),
            span_id: (seed * BATCH as u64 + i + 1).to_be_bytes().to_vec(),
            parent_span_id: (seed * BATCH as u64 + i).to_be_bytes().to_vec(),
            name: "POST /charge".to_owned(),
            kind: 2,
            start_time_unix_nano: 1_700_000_000_000_000_000 + i,
            end_time_unix_nano: 1_700_000_000_000_500_000 + i,
            attributes: vec![
                string("http.route", "/charge"),
                string("http.request.method", "POST"),
                string("payment.amount_cents", "700"),
            ],
            ..Span::default()
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![string("service.name", "payments")],
                ..Resource::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        }],
    }
}

/// One export over `grpc` or OTLP/HTTP: whether it was taken.
async fn export(
    client: &hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    otlp: SocketAddr,
    grpc: bool,
    body: Bytes,
) -> bool {
    let request = match grpc {
        true => Request::post(format!(
            "http://{otlp}/opentelemetry.proto.collector.trace.v1.TraceService/Export"
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers"),
        false => Request::post(format!("http://{otlp}/v1/traces")).header("content-type", "application/x-protobuf"),
    };
    let Ok(response) = client.request(request.body(Full::new(body)).expect("a request")).await else {
        return false;
    };
    let ok = response.status() == 200;
    let Ok(collected) = response.into_body().collect().await else {
        return false;
    };
    match grpc {
        true => {
            ok && collected
                .trailers()
                .and_then(|t| t.get("grpc-status"))
                .is_some_and(|s| s == "0")
        }
        false => ok,
    }
}

#[tokio::main]
async fn main() {
    let built = build();
    let state = tempfile::tempdir().expect("a temp dir");
    let supervisor = run_payments(&built, state.path(), "26800-26899", &[]);
    let pid = supervisor.id();
    let _supervisor = Guard(supervisor);
    let front = front_port(state.path(), "payments").await;
    wait_until_answers(front, "/health").await;
    let api = Api::read(state.path());
    let control: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.path().join("control.json")).expect("control.json")).expect("JSON");
    let otlp: SocketAddr = control["otlp"]
        .as_str()
        .expect("the OTLP endpoint")
        .parse()
        .expect("an address");
    let ticks_per_second = 100.0; // USER_HZ on Linux

    for grpc in [false, true] {
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .http2_only(grpc)
            .build_http::<Full<Bytes>>();
        let encoded = batch(1, 0).encode_to_vec();
        let body = match grpc {
            true => {
                let mut framed = vec![0u8];
                framed.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
                framed.extend_from_slice(&encoded);
                Bytes::from(framed)
            }
            false => Bytes::from(encoded),
        };
        let (taken, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let before = cpu_ticks(pid);
        let began = Instant::now();
        let clients: Vec<_> = (0..CLIENTS)
            .map(|_| {
                let (client, body) = (client.clone(), body.clone());
                let (taken, refused) = (Arc::clone(&taken), Arc::clone(&refused));
                tokio::spawn(async move {
                    while began.elapsed() < RUN {
                        match export(&client, otlp, grpc, body.clone()).await {
                            true => taken.fetch_add(1, Ordering::Relaxed),
                            false => refused.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                })
            })
            .collect();
        for client in clients {
            client.await.expect("a client");
        }
        let wall = began.elapsed().as_secs_f64();
        let cpu = (cpu_ticks(pid) - before) as f64 / ticks_per_second;
        let spans = taken.load(Ordering::Relaxed) as f64 * BATCH as f64;
        let per_second = spans / wall;
        let cpu_per_10k = cpu / (spans / 10_000.0);
        println!(
            "{}: {:.0} spans/s, supervisor CPU {:.1} ms per 10,000 spans ({:.0} spans/s per core), {} exports refused",
            if grpc { "OTLP/gRPC" } else { "OTLP/HTTP protobuf" },
            per_second,
            cpu_per_10k * 1000.0,
            10_000.0 / cpu_per_10k,
            refused.load(Ordering::Relaxed)
        );
    }

    // From an export's answer to its span in the API.
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut times = Vec::new();
    for i in 0..20u128 {
        let trace = 0x1000_0000_0000_0000_0000_0000_0000_0000 + i;
        let body = Bytes::from(batch(trace, 0).encode_to_vec());
        assert!(export(&client, otlp, false, body).await, "an export");
        let exported = Instant::now();
        loop {
            let answer = api.call("GET", &format!("/api/spans?trace={trace:032x}"));
            if answer.contains("POST /charge") {
                break;
            }
            assert!(exported.elapsed() < Duration::from_secs(5), "the span never showed");
        }
        times.push(exported.elapsed());
    }
    println!(
        "a span visible in the API {:.1} ms (median of 20) after its export was answered",
        devmesh_bench::median_time(times).as_secs_f64() * 1000.0
    );

    // The flood, against payments' own requests.
    let quiet = tokio::task::spawn_blocking(move || wrk(front, "/health", "5s", "4"))
        .await
        .expect("wrk");
    let rss_before = rss_kib(pid);
    let began = Instant::now();
    let sent = Arc::new(AtomicU64::new(0));
    let flooders: Vec<_> = (0..CLIENTS as u64)
        .map(|client_index| {
            let (client, sent) = (client.clone(), Arc::clone(&sent));
            tokio::spawn(async move {
                let mut seed = client_index << 40;
                while began.elapsed() < FLOOD {
                    seed += 1;
                    // New spans each time: the store keeps what it can.
                    let body = Bytes::from(batch(u128::from(seed), seed).encode_to_vec());
                    if export(&client, otlp, false, body).await {
                        sent.fetch_add(BATCH as u64, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let watching = tokio::spawn(async move {
        let mut largest = 0;
        while began.elapsed() < FLOOD {
            largest = largest.max(rss_kib(pid));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        largest
    });
    tokio::time::sleep(Duration::from_secs(10)).await;
    let flooded = tokio::task::spawn_blocking(move || wrk(front, "/health", "10s", "4"))
        .await
        .expect("wrk");
    for flooder in flooders {
        flooder.await.expect("a flooder");
    }
    let largest = watching.await.expect("the watcher");
    println!(
        "flood of {:.0} spans/s for {} s: supervisor RSS {} MiB before, {} MiB at most (spans' cap 16 MiB)",
        sent.load(Ordering::Relaxed) as f64 / FLOOD.as_secs_f64(),
        FLOOD.as_secs(),
        rss_before / 1024,
        largest / 1024
    );
    println!(
        "payments' front port: {:.0} req/s p99 {:.2?} before, {:.0} req/s p99 {:.2?} during the flood ({:.2}× p99)",
        quiet.rps,
        quiet.p99,
        flooded.rps,
        flooded.p99,
        flooded.p99.as_secs_f64() / quiet.p99.as_secs_f64()
    );
}
