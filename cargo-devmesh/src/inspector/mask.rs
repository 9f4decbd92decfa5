//! Secret headers, masked where the inspector shows an exchange (the page,
//! the API, HAR, JSON lines) and never where it keeps one: a replay sends
//! the real value, which stays in the supervisor's memory.
//!
//! A masked value keeps its length, and starts with a short keyed hash of
//! the real one, so that two requests with the same token can be told from
//! two with different ones; the key is new each run, so the hash says
//! nothing outside it.

use std::hash::{BuildHasher, RandomState};

use super::{Exchange, Headers};

/// Values shorter than this are all stars: a hash of a short secret would
/// be too easy to reverse.
const HASHED_FROM: usize = 12;
/// Hex digits of the hash shown.
const SHOWN: usize = 6;

#[derive(Debug)]
pub struct Masker {
    /// Header names, lowercase.
    names: Vec<String>,
    key: RandomState,
}

impl Masker {
    /// Masks `names`, and always the team token a front port sends a
    /// developer's tunnel (`x-devmesh-access`): devmesh's own secret.
    pub fn new(names: &[String]) -> Masker {
        let own = crate::tunnel::relay::callers::ACCESS_HEADER.to_owned();
        Masker {
            names: names.iter().chain([&own]).map(|n| n.to_ascii_lowercase()).collect(),
            key: RandomState::new(),
        }
    }

    pub fn masks(&self, name: &str) -> bool {
        self.names.iter().any(|n| n.eq_ignore_ascii_case(name))
    }

    /// `value` masked: its hash's first digits, then stars, as long as it.
    pub fn value(&self, value: &str) -> String {
        let length = value.chars().count();
        if length < HASHED_FROM {
            return "*".repeat(length);
        }
        let hash = format!("{:016x}", self.key.hash_one(value));
        format!("{}{}", &hash[..SHOWN], "*".repeat(length - SHOWN))
    }

    /// Masks, in place, span or log attributes that carry a masked header
    /// (`http.request.header.authorization`, as OpenTelemetry names them),
    /// or are named as one.
    pub fn attributes(&self, attributes: &mut [(String, String)]) {
        for (key, value) in attributes {
            let header = ["http.request.header.", "http.response.header."]
                .iter()
                .find_map(|prefix| key.strip_prefix(prefix))
                .unwrap_or(key);
            if self.masks(header) || self.masks(&header.replace('_', "-")) {
                *value = self.value(value);
            }
        }
    }

    pub fn headers(&self, headers: &Headers) -> Headers {
        if !headers.iter().any(|(name, _)| self.masks(name)) {
            return headers.clone();
        }
        let text = headers
            .iter()
            .map(|(name, value)| match self.masks(name) {
                true => format!("{name}: {}\n", self.value(value)),
                false => format!("{name}: {value}\n"),
            })
            .collect();
        Headers::from_text(text)
    }

    /// `exchange` as it may be shown.
    pub fn exchange(&self, mut exchange: Exchange) -> Exchange {
        if !self.names.is_empty() {
            exchange.request_headers = self.headers(&exchange.request_headers);
            exchange.response_headers = self.headers(&exchange.response_headers);
            exchange.response_trailers = self.headers(&exchange.response_trailers);
        }
        exchange
    }

    /// The real value of a header of `original` that `shown` is the mask
    /// of, so that an edited replay whose form showed masked values sends
    /// the real ones; `None` when `shown` was typed anew.
    pub fn real_value<'a>(&self, original: &'a Headers, name: &str, shown: &str) -> Option<&'a str> {
        if !self.masks(name) {
            return None;
        }
        original
            .iter()
            .find(|(n, v)| n.eq_ignore_ascii_case(name) && self.value(v) == shown)
            .map(|(_, v)| v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_masked_value_keeps_its_length_and_tells_tokens_apart() {
        let masker = Masker::new(&["Authorization".to_owned()]);
        let a = masker.value("Bearer secret-token-1");
        assert_eq!(a.len(), "Bearer secret-token-1".len());
        assert!(a.ends_with("****") && !a.contains("secret"), "{a}");
        assert_eq!(a, masker.value("Bearer secret-token-1"));
        assert_ne!(a, masker.value("Bearer secret-token-2"));
        assert_eq!(masker.value("short"), "*****");
        let headers = Headers::from_text("authorization: Bearer secret-token-1\naccept: */*\n".to_owned());
        let shown = masker.headers(&headers);
        assert_eq!(shown.get("accept").as_deref(), Some("*/*"));
        assert_eq!(shown.get("authorization"), Some(a.clone()));
        assert_eq!(
            masker.real_value(&headers, "Authorization", &a),
            Some("Bearer secret-token-1")
        );
        assert_eq!(masker.real_value(&headers, "Authorization", "Bearer typed"), None);
    }
}
