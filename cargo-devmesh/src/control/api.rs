//! What the API sends and its client reads back, as the types both sides
//! share: a renamed field fails to compile, not blanks `ps`.
//!
//! Besides these: `GET /api/services` is a list of
//! [`ServiceState`](crate::supervisor::ServiceState), and a service command
//! answers a [`Done`](crate::supervisor::Done).

use serde::{Deserialize, Serialize};

/// Any refused request: what went wrong, with a hint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}

/// `POST /api/login`: a new one-time link that logs a browser in.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoginLink {
    pub url: String,
}
