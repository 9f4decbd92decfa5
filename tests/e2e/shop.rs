//! The README's main job: `cargo devmesh run` on `examples/shop`.

use std::path::Path;

use crate::harness::{Mesh, REPO, exchanges, get};

#[test]
fn a_checkout_goes_through_all_three_services() {
    let mut mesh = Mesh::in_place(&Path::new(REPO).join("examples/shop"));
    mesh.run(&[]);
    for service in ["payments", "orders", "gateway"] {
        mesh.wait_ready(service, 1);
    }
    let (status, body) = get(mesh.front("gateway"), "/checkout/tea?quantity=2");
    assert_eq!(status, 200, "{body}");
    let order: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(order["order"]["item"], "tea");
    assert_eq!(order["order"]["payment"]["amount_cents"], 700);
    assert_eq!(order["order"]["payment"]["status"], "approved");
    // The services pass the trace on: one trace, each call the child of
    // the request that made it.
    let chain = exchanges(&mesh, 3, |e| {
        e["status"] == 200 && e["method"] != "GET" || e["path"] == "/checkout/tea?quantity=2"
    });
    let by = |service: &str| chain.iter().find(|e| e["service"] == service).expect("an exchange");
    let (gateway, orders, payments) = (by("gateway"), by("orders"), by("payments"));
    assert_eq!(orders["trace_id"], gateway["trace_id"]);
    assert_eq!(payments["trace_id"], gateway["trace_id"]);
    assert_eq!(orders["parent_span_id"], gateway["span_id"]);
    assert_eq!(payments["parent_span_id"], orders["span_id"]);
    assert!(chain.iter().all(|e| e["trace_inferred"] == false));

    let (status, body) = get(mesh.front("gateway"), "/checkout/pie");
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("no item `pie`"), "{body}");

    // 30 teas are 10 500 cents: payments declines, and the gateway says so.
    let (status, body) = get(mesh.front("gateway"), "/checkout/tea?quantity=30");
    assert_eq!(status, 402, "{body}");
    assert!(body.contains("payment declined"), "{body}");
}
