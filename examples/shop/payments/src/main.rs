//! payments: approves charges. Declines any over 10 000 cents with a 402,
//! so the error path through orders and the gateway can be tried
//! (`GET /checkout/tea?quantity=30` on the gateway).

use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::StatusCode;
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

/// Charges above this many cents are declined.
const LIMIT_CENTS: u64 = 10_000;

async fn charge(Json(charge): Json<Charge>) -> Result<Json<Receipt>, (StatusCode, String)> {
    if charge.amount_cents > LIMIT_CENTS {
        println!("declined a charge of {} cents", charge.amount_cents);
        return Err((
            StatusCode::PAYMENT_REQUIRED,
            format!(
                "payment declined: {} cents is over the limit of {LIMIT_CENTS}",
                charge.amount_cents
            ),
        ));
    }
    Ok(Json(Receipt {
        charge_id: NEXT_CHARGE.fetch_add(1, Ordering::Relaxed),
        amount_cents: charge.amount_cents,
        status: "approved",
    }))
}

#[tokio::main]
async fn main() {
    let app = Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/charge", post(charge));
    shop_common::serve(app).await;
}
