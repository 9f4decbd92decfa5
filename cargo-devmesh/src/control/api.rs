//! What the API sends and its client reads back, as the types both sides
//! share: a renamed field fails to compile, not blanks `ps`.
//!
//! Besides these, a service command answers a
//! [`Done`](crate::supervisor::Done).

use devmesh::config::Mode;
use serde::{Deserialize, Serialize};

use crate::proxy::Traffic;
use crate::supervisor::ServiceState;

/// `GET /api/services`: a service as `ps` and the page show it, with
/// where its front port sends traffic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceView {
    #[serde(flatten)]
    pub state: ServiceState,
    pub mode: Mode,
    pub traffic: Traffic,
    /// Its copy in the sandbox, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
    /// Whether that copy is reached through the relay (its URL is then
    /// the sandbox's own view of it, not an address here).
    #[serde(default)]
    pub via_relay: bool,
}

/// `POST /api/services/{name}/mode?to=…`: where its traffic goes now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModeSet {
    pub mode: Mode,
    pub traffic: Traffic,
}

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

/// `GET /api/routes`: who serves which route.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RoutesView {
    /// Developers' copies of the services here: (service, route, URL).
    pub copies: Vec<(String, String, String)>,
    /// This developer's routed services: (service, route).
    pub own: Vec<(String, String)>,
    /// Services shared for everyone, which no route keeps to this developer.
    pub shared: Vec<String>,
}

/// `GET /api/backends`: a remote backend, what it knows, and whether its
/// answers are current.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendView {
    pub place: String,
    pub names: Vec<String>,
    /// Why its answers are not current, while they are not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale: Option<String>,
}
