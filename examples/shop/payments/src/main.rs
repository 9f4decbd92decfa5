//! payments: approves charges. Declines any over 10 000 cents, so the
//! gateway's error path can be tried.

use std::sync::atomic::{AtomicU64, Ordering};

use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct Charge {
    amount_cents: u64,
}

#[derive(Serialize)]
struct Receipt {
    charge_id: u64,
    amount_cents: u64,
    status: &'static str,
}

static NEXT_CHARGE: AtomicU64 = AtomicU64::new(1);

async fn charge(Json(charge): Json<Charge>) -> Json<Receipt> {
    let status = if charge.amount_cents > 10_000 {
        "declined"
    } else {
        "approved"
    };
    Json(Receipt {
        charge_id: NEXT_CHARGE.fetch_add(1, Ordering::Relaxed),
        amount_cents: charge.amount_cents,
        status,
    })
}

#[tokio::main]
async fn main() {
    let app = Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/charge", post(charge));
    shop_common::serve(app).await;
}
