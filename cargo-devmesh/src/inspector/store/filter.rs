//! Which exchanges a list or an export shows.

use crate::inspector::exchange::Exchange;
use crate::inspector::trace::TraceId;

/// Which exchanges a list shows.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub service: Option<String>,
    pub method: Option<String>,
    /// `2` matches 2xx, `404` matches 404, `failed` what failed (an error,
    /// a 5xx, a gRPC status but OK).
    pub status: Option<String>,
    /// Text in the path or a body.
    pub text: Option<String>,
    pub trace_id: Option<TraceId>,
    /// Only exchanges with a greater id.
    pub after: Option<u64>,
    pub limit: Option<usize>,
}

impl Filter {
    pub(super) fn matches(&self, e: &Exchange) -> bool {
        let contains = |haystack: &str, needle: &str| haystack.to_lowercase().contains(&needle.to_lowercase());
        self.service
            .as_ref()
            .is_none_or(|s| *e.service == **s || *e.caller == **s)
            && self.method.as_ref().is_none_or(|m| e.method.eq_ignore_ascii_case(m))
            && self.status.as_ref().is_none_or(|s| match s.as_str() {
                "failed" => crate::inspector::ring::Call::of(&e.summary).failed(),
                s => e.status.is_some_and(|status| status.to_string().starts_with(s)),
            })
            && self.trace_id.is_none_or(|t| e.trace_id == Some(t))
            && self.after.is_none_or(|after| e.id > after)
            && self.text.as_ref().is_none_or(|t| {
                contains(&e.path, t)
                    || e.request_body.text.as_deref().is_some_and(|b| contains(b, t))
                    || e.response_body.text.as_deref().is_some_and(|b| contains(b, t))
            })
    }
}
