//! orders: takes an order, charges it through payments, remembers it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use shop_common::{CallError, post_json};

/// How long payments may take before an order fails with a 504.
const PAYMENT_TIMEOUT: Duration = Duration::from_secs(2);

/// Cents per unit, by item.
const PRICES: [(&str, u64); 3] = [("tea", 350), ("coffee", 420), ("cake", 600)];

#[derive(Deserialize)]
struct NewOrder {
    item: String,
    quantity: u64,
}

#[derive(Clone, Serialize)]
struct Order {
    id: u64,
    item: String,
    quantity: u64,
    payment: Value,
    /// The process that placed it: with developers' copies of orders in one
    /// sandbox (`route = true`), whose copy it was.
    placed_by: u32,
}

type Orders = Arc<Mutex<HashMap<u64, Order>>>;

async fn create(
    State(orders): State<Orders>,
    headers: HeaderMap,
    Json(new): Json<NewOrder>,
) -> Result<Json<Order>, CallError> {
    let Some((_, price)) = PRICES.iter().find(|(item, _)| *item == new.item) else {
        let items: Vec<_> = PRICES.iter().map(|(item, _)| *item).collect();
        return Err(CallError(
            StatusCode::NOT_FOUND,
            format!("no item `{}`; we sell {}", new.item, items.join(", ")),
        ));
    };
    let charge = json!({ "amount_cents": price * new.quantity });
    let payment: Value = post_json("payments", "/charge", &charge, PAYMENT_TIMEOUT).await?;
    let mut orders = orders.lock().expect("orders lock");
    let order = Order {
        id: orders.len() as u64 + 1,
        item: new.item,
        quantity: new.quantity,
        payment,
        placed_by: std::process::id(),
    };
    orders.insert(order.id, order.clone());
    // The trace id links this line to the request in `cargo devmesh`'s inspector.
    let trace = headers.get("traceparent").and_then(|v| v.to_str().ok()).unwrap_or("-");
    println!(
        "order {} placed: {} x{} (traceparent {trace})",
        order.id, order.item, order.quantity
    );
    Ok(Json(order))
}

async fn show(State(orders): State<Orders>, Path(id): Path<u64>) -> Result<Json<Order>, StatusCode> {
    orders
        .lock()
        .expect("orders lock")
        .get(&id)
        .cloned()
        .map(Json)
        .ok_or(StatusCode::NOT_FOUND)
}

#[tokio::main]
async fn main() {
    let app = Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/orders", post(create))
        .route("/orders/{id}", get(show))
        .with_state(Orders::default());
    shop_common::serve(app).await;
}
