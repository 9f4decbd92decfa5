//! Faults a test sets on a service's front port: its callers meet them,
//! the service itself is untouched.

use std::time::Duration;

use cargo_devmesh::Faults;

/// A fault on a service's front port (see [`crate::Mesh::fault`]). Faults
/// add up: a latency and a share of errors both apply. Shares are spread
/// evenly, not drawn at random: `share: 0.25` fails exactly every fourth
/// request, so a test's counts are exact.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Fault {
    /// Every request waits this long before it goes on (every connection,
    /// for a TCP service).
    Latency(Duration),
    /// This share of requests (0 to 1) is answered with this status by the
    /// front port; the service never sees them.
    Errors { share: f64, status: u16 },
    /// This share of requests has its connection closed with no answer.
    Drops { share: f64 },
    /// Every connection is reset at once, as if nothing listened.
    Unreachable,
}

impl Fault {
    pub(crate) fn apply(self, faults: &mut Faults) {
        match self {
            Fault::Latency(latency) => faults.latency = Some(latency),
            Fault::Errors { share, status } => {
                let status = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::SERVICE_UNAVAILABLE);
                faults.errors = Some((share, status));
            }
            Fault::Drops { share } => faults.drops = Some(share),
            Fault::Unreachable => faults.unreachable = true,
        }
    }
}
