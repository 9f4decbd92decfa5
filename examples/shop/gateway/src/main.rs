//! gateway: the shop's front door. `GET /checkout/{item}?quantity=N` places
//! an order through orders (which charges it through payments).

use std::time::Duration;

use axum::extract::{Path, Query};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use shop_common::{CallError, post_json};

/// How long an order may take (orders waits 2 s for payments).
const ORDER_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Deserialize)]
struct Checkout {
    #[serde(default = "one")]
    quantity: u64,
}

fn one() -> u64 {
    1
}

async fn checkout(Path(item): Path<String>, Query(query): Query<Checkout>) -> Result<Json<Value>, CallError> {
    let order: Value = post_json(
        "orders",
        "/orders",
        &json!({ "item": item, "quantity": query.quantity }),
        ORDER_TIMEOUT,
    )
    .await?;
    Ok(Json(json!({ "thanks": "your order is placed", "order": order })))
}

#[tokio::main]
async fn main() {
    let app = Router::new()
        .route("/", get(|| async { "the shop: try GET /checkout/tea?quantity=2\n" }))
        .route("/health", get(|| async { "ok" }))
        .route("/checkout/{item}", get(checkout));
    shop_common::serve(app).await;
}
