//! The README's main job: `cargo devmesh run` on `examples/shop`.

use std::path::Path;

use crate::harness::{Mesh, REPO, get};

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

    let (status, body) = get(mesh.front("gateway"), "/checkout/pie");
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("no item `pie`"), "{body}");
}
