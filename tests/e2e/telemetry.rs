//! Services' own telemetry: a Python service instrumented with
//! OpenTelemetry's SDK (from PyPI) sends its spans over OTLP/gRPC, its logs
//! and metrics over OTLP/HTTP, to the endpoint devmesh gave it in
//! `OTEL_EXPORTER_OTLP_ENDPOINT`; what it sends joins the hops its front
//! ports captured.

use std::time::{Duration, Instant};

use crate::browser::Browser;
use crate::harness::{DEADLINE, Mesh, api_get, exchanges, fixture, get, text};
use crate::inspector::page;
use crate::remote::add_config;

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
fn a_services_own_spans_logs_and_metrics_join_the_captured_trace() {
    let dir = fixture("mesh");
    add_config(
        dir.path(),
        "[services.traced]\ncommand = \"exec python3 traced.py\"\ncwd = \"traced\"\n\
         depends_on = [\"beta\"]\ninject_env = true\n\n\
         [services.beta]\nenv = { OTEL_SERVICE_NAME = \"beta-as-i-call-it\" }",
    );
    let mesh = Mesh::start(dir, &["traced", "beta"], &["beta", "traced"]);

    // Where services export, and whose own setting wins.
    let ps = text(&mesh.cli(&["ps"]));
    assert!(ps.contains("otlp: http://127.0.0.1:"), "{ps}");
    assert!(
        ps.contains("beta: its own OTEL_SERVICE_NAME (devmesh.toml) wins"),
        "{ps}"
    );

    let (status, body) = get(mesh.front("traced"), "/checkout");
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("traced got: beta "), "{body}");

    // The front ports' hops: the test's call to traced, traced's to beta.
    let hop = exchanges(&mesh, 1, |e| e["service"] == "traced" && e["path"] == "/checkout").remove(0);
    let trace = hop["trace_id"].as_str().expect("a trace id").to_owned();
    let to_beta = exchanges(&mesh, 1, |e| e["service"] == "beta" && e["trace_id"] == trace.as_str()).remove(0);

    // traced's own spans, in the same trace: its server span the child of
    // the front port's hop, its client span the parent of the next hop.
    let spans = eventually("traced's two spans", || {
        let spans = api_get(&mesh, &format!("/api/spans?trace={trace}"));
        (spans.as_array()?.len() >= 2).then_some(spans)
    });
    let named = |name: &str| {
        spans
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("no span `{name}`: {spans}"))
            .clone()
    };
    let (server, client) = (named("GET /checkout"), named("call beta"));
    for id in [&hop["span_id"], &server["span_id"], &client["span_id"]] {
        assert!(id.as_str().is_some_and(|id| id.len() == 16), "{id}");
    }
    assert_eq!(server["service"], "traced");
    assert_eq!(server["kind"], "server");
    assert_eq!(server["parent_span_id"], hop["span_id"], "{spans}");
    assert_eq!(client["parent_span_id"], server["span_id"], "{spans}");
    assert_eq!(to_beta["parent_span_id"], client["span_id"], "{spans}");

    // Its log record, with the trace, beside the lines services print.
    let logs = eventually("traced's log record", || {
        let logs = text(&mesh.cli(&["logs", "--trace", &trace]));
        logs.contains("traced | WARN called beta").then_some(logs)
    });
    assert!(logs.contains("order=7"), "{logs}");
    let refused = text(&mesh.cli(&["logs", "--trace", "not-a-trace"]));
    assert!(refused.contains("is no trace id"), "{refused}");

    // Its counter's newest value.
    let metric = eventually("traced's counter", || {
        let metrics = api_get(&mesh, "/api/metrics");
        metrics.as_array()?.iter().find(|m| m["name"] == "checkouts").cloned()
    });
    assert_eq!(metric["service"], "traced");
    assert_eq!(metric["value"]["kind"], "sum");
    assert!(metric["value"]["value"].as_f64().is_some_and(|v| v >= 1.0), "{metric}");

    // The page: the trace's waterfall holds both hops and traced's spans,
    // each under its parent; the metrics view has the counter.
    let mut browser = Browser::open(&page(&mesh));
    let id = hop["id"].as_u64().unwrap();
    browser.wait_until(
        &format!("document.querySelector('#rows tr[data-id=\"{id}\"]')"),
        "the exchange",
    );
    browser.eval(&format!("document.querySelector('#rows tr[data-id=\"{id}\"]').click()"));
    browser.eval("document.dispatchEvent(new KeyboardEvent('keydown', {key: 't'}))");
    let rows = browser.wait_until(
        "[...document.querySelectorAll('#detail-body .bar-row')].length === 4 && \
         [...document.querySelectorAll('#detail-body .bar-row')].map(r => r.innerText.replace(/\\s+/g, ' ') + ' @' + r.firstElementChild.style.paddingLeft)",
        "the waterfall with the hops and the spans",
    );
    let rows: Vec<String> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();
    assert!(
        rows[0].contains("→ traced GET /checkout") && rows[0].ends_with("@0px"),
        "{rows:?}"
    );
    assert!(
        rows[1].contains("traced · GET /checkout server") && rows[1].ends_with("@14px"),
        "{rows:?}"
    );
    assert!(
        rows[2].contains("traced · call beta client") && rows[2].ends_with("@28px"),
        "{rows:?}"
    );
    assert!(
        rows[3].contains("traced → beta GET /whoami") && rows[3].ends_with("@42px"),
        "{rows:?}"
    );
    let shot = browser.screenshot("telemetry-trace");
    browser.eval("document.dispatchEvent(new KeyboardEvent('keydown', {key: '4'}))");
    browser.wait_until(
        "document.getElementById('metric-rows').innerText.includes('checkouts')",
        "the counter in the metrics view",
    );
    let metrics_shot = browser.screenshot("telemetry-metrics");
    eprintln!("screenshots: {} {}", shot.display(), metrics_shot.display());
}
