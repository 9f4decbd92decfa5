//! HAR 1.2 export, which browser dev tools open.

use serde_json::{Value, json};

use super::{Body, Exchange, Headers, Kind};

/// A HAR 1.2 log's text before its entries (HTTP exchanges only: HAR has
/// no room for raw TCP), which an export streams one at a time, with
/// commas between, and then [`END`].
pub const START: &str = concat!(
    r#"{"log":{"version":"1.2","creator":{"name":"devmesh","version":""#,
    env!("CARGO_PKG_VERSION"),
    r#""},"entries":["#
);
/// A HAR log's text after its entries.
pub const END: &str = "]}}";

/// Exchange `e` as a HAR entry; `None` for raw TCP.
pub fn entry(e: &Exchange) -> Option<Value> {
    (e.kind != Kind::Tcp).then(|| entry_of(e))
}

fn entry_of(e: &Exchange) -> Value {
    let started = std::time::UNIX_EPOCH + std::time::Duration::from_millis(e.started_ms);
    let host = e.request_headers.get("host").unwrap_or_else(|| e.service.to_string());
    let total = e.total_ms.unwrap_or(0.0);
    let wait = e.service_ms.unwrap_or(0.0);
    json!({
        "startedDateTime": crate::time::timestamp(started),
        "time": total,
        "request": {
            "method": e.method,
            "url": format!("http://{host}{}", e.path),
            "httpVersion": e.version,
            "cookies": [],
            "headers": headers(&e.request_headers),
            "queryString": query(&e.path),
            "postData": post_data(&e.request_body, &e.request_headers),
            "headersSize": -1,
            "bodySize": e.request_body.size,
        },
        "response": {
            "status": e.status.unwrap_or(0),
            "statusText": "",
            "httpVersion": e.version,
            "cookies": [],
            "headers": headers(&e.response_headers),
            "content": content(&e.response_body, &e.response_headers),
            "redirectURL": "",
            "headersSize": -1,
            "bodySize": e.response_body.size,
        },
        "cache": {},
        "timings": {
            "blocked": e.wait_ms,
            "send": 0,
            "wait": wait,
            "receive": (total - wait - e.wait_ms).max(0.0),
        },
        "_devmesh": { "id": e.id, "caller": e.caller, "service": e.service, "traceId": e.trace_id, "replayOf": e.replay_of },
    })
}

fn headers(headers: &Headers) -> Vec<Value> {
    let pairs = headers.pairs().into_iter();
    pairs
        .map(|(name, value)| json!({ "name": name, "value": value }))
        .collect()
}

fn query(path: &str) -> Vec<Value> {
    let Some((_, query)) = path.split_once('?') else {
        return Vec::new();
    };
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            json!({ "name": name, "value": value })
        })
        .collect()
}

fn mime(headers: &Headers) -> String {
    headers.get("content-type").unwrap_or_default()
}

fn post_data(body: &Body, headers: &Headers) -> Value {
    json!({ "mimeType": mime(headers), "text": body.text.clone().unwrap_or_default() })
}

fn content(body: &Body, headers: &Headers) -> Value {
    match (&body.text, &body.base64) {
        (Some(text), _) => json!({ "size": body.size, "mimeType": mime(headers), "text": text }),
        (None, Some(encoded)) => {
            json!({ "size": body.size, "mimeType": mime(headers), "text": encoded, "encoding": "base64" })
        }
        (None, None) => json!({ "size": body.size, "mimeType": mime(headers) }),
    }
}
