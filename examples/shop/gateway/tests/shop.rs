//! The shop, tested across its services: each test gets a mesh of its own
//! (the real gateway, orders and payments binaries, on ports of its own),
//! calls the gateway as a customer would, and checks what went between
//! the services. Run them with `cargo test` or `cargo nextest run`, in
//! parallel.

use std::time::{Duration, Instant};

use axum::Json;
use axum::routing::post;
use devmesh_testing::{Fault, Mesh, MeshBuilder};
use serde_json::{Value, json};

/// A customer buys `quantity` of `item`: the gateway's status and body.
async fn checkout(mesh: &Mesh, item: &str, quantity: u32) -> (u16, String) {
    let url = format!("{}/checkout/{item}?quantity={quantity}", mesh.url("gateway"));
    let answer = reqwest::get(url).await.expect("the gateway answers");
    (answer.status().as_u16(), answer.text().await.unwrap_or_default())
}

#[devmesh::test(services("gateway"))]
async fn an_order_is_charged_once_for_its_price(mesh: Mesh) {
    let (status, body) = checkout(&mesh, "tea", 2).await;
    assert_eq!(status, 200, "{body}");
    let placed: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(placed["order"]["payment"]["status"], "approved");

    let traffic = mesh.traffic().await;
    traffic
        .from("gateway")
        .to("orders")
        .request("POST", "/orders")
        .with_json("item", "tea")
        .with_json("quantity", 2)
        .assert_once();
    // Two teas at 350 cents.
    traffic
        .from("orders")
        .to("payments")
        .request("POST", "/charge")
        .with_json("amount_cents", 700)
        .status(200)
        .assert_once();
}

/// payments, written in the test: a closure that declines everything.
fn declining_payments(mesh: MeshBuilder) -> MeshBuilder {
    mesh.handler_fn("payments", |_charge| async { (402, "declined by the test") })
}

#[devmesh::test(services("gateway", "orders"), setup(declining_payments))]
async fn a_declined_payment_is_the_customers_answer(mesh: Mesh) {
    let (status, body) = checkout(&mesh, "cake", 1).await;
    assert_eq!(status, 402, "{body}");
    assert!(body.contains("declined by the test"), "{body}");
    mesh.traffic()
        .await
        .to("payments")
        .request("POST", "/charge")
        .with_json("amount_cents", 600)
        .status(402)
        .assert_once();
}

#[tokio::test]
async fn payments_written_as_an_axum_router_in_the_test() {
    let payments = axum::Router::new().route(
        "/charge",
        post(|Json(charge): Json<Value>| async move {
            Json(json!({ "charge_id": 7, "amount_cents": charge["amount_cents"], "status": "approved by a router" }))
        }),
    );
    let mesh = Mesh::builder()
        .services(["gateway"])
        .handler("payments", payments)
        .start()
        .await
        .expect("the mesh starts");
    let (status, body) = checkout(&mesh, "coffee", 3).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("approved by a router"), "{body}");
    mesh.traffic()
        .await
        .to("payments")
        .with_json("amount_cents", 1260)
        .assert_once();
}

#[devmesh::test(services("gateway"))]
async fn a_slow_payment_times_out_at_the_order(mesh: Mesh) {
    mesh.fault("payments", Fault::Latency(Duration::from_secs(3)));
    let began = Instant::now();
    let (status, body) = checkout(&mesh, "tea", 1).await;
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("payments did not answer within 2 s"), "{body}");
    assert!(
        began.elapsed() < Duration::from_secs(3),
        "orders gave up before payments answered"
    );
}

#[devmesh::test(services("gateway"))]
async fn half_the_payments_failing_fail_half_the_orders(mesh: Mesh) {
    mesh.fault(
        "payments",
        Fault::Errors {
            share: 0.5,
            status: 503,
        },
    );
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(checkout(&mesh, "tea", 1).await.0);
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 200, 503, 503]);
    let traffic = mesh.traffic().await.to("payments");
    traffic.status(503).assert_count(2);
    traffic.status(200).assert_count(2);
}

#[devmesh::test(services("gateway"))]
async fn a_dropped_connection_to_payments_is_a_bad_gateway(mesh: Mesh) {
    mesh.fault("payments", Fault::Drops { share: 1.0 });
    let (status, body) = checkout(&mesh, "tea", 1).await;
    assert_eq!(status, 502, "{body}");
    assert!(body.starts_with("payments: "), "{body}");
    let dropped = mesh.traffic().await.to("payments").assert_once().clone();
    assert_eq!(dropped.status, None);
    assert!(dropped.error.unwrap_or_default().contains("by a fault"));
}

#[devmesh::test(services("gateway"))]
async fn unreachable_payments_then_back(mesh: Mesh) {
    mesh.fault("payments", Fault::Unreachable);
    let (status, body) = checkout(&mesh, "tea", 1).await;
    assert_eq!(status, 502, "{body}");
    mesh.clear_faults("payments");
    let (status, body) = checkout(&mesh, "tea", 1).await;
    assert_eq!(status, 200, "{body}");
}

#[devmesh::test(services("gateway"))]
async fn orders_restarted_mid_test_fails_no_request(mesh: Mesh) {
    let restarted = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let shoppers: Vec<_> = (0..4)
        .map(|_| {
            let url = format!("{}/checkout/tea?quantity=1", mesh.url("gateway"));
            let restarted = std::sync::Arc::clone(&restarted);
            tokio::spawn(async move {
                // One pooled client a shopper, as a real caller keeps; it
                // shops until orders has restarted, then ten times more.
                let client = reqwest::Client::new();
                let (mut statuses, mut after) = (Vec::new(), 0);
                while after < 10 {
                    let answer = client.get(&url).send().await.expect("the gateway answers");
                    statuses.push(answer.status().as_u16());
                    after += usize::from(restarted.load(std::sync::atomic::Ordering::Relaxed));
                }
                statuses
            })
        })
        .collect();
    let before = mesh.traffic().await.to("orders").len();
    mesh.restart("orders").await.expect("orders restarts");
    restarted.store(true, std::sync::atomic::Ordering::Relaxed);
    for shopper in shoppers {
        let statuses = shopper.await.unwrap();
        assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    }
    let orders = mesh.traffic().await.to("orders");
    assert!(orders.len() >= before + 40, "orders took requests across its restart");
    orders
        .filter("not answered 200", |call| call.status != Some(200))
        .assert_none();
}

#[devmesh::test(services("gateway"))]
async fn payments_says_why_it_declines(mesh: Mesh) {
    // Thirty teas: 10 500 cents, over payments' limit.
    let (status, body) = checkout(&mesh, "tea", 30).await;
    assert_eq!(status, 402, "{body}");
    mesh.wait_log("payments", "declined a charge of 10500 cents")
        .await
        .unwrap();
    assert!(!mesh.logs("orders").contains("order 1 placed"), "no order was placed");
}
