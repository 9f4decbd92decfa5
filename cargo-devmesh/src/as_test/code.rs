//! The pieces of Rust a captured test is written in: literals for the
//! captured strings, bytes and JSON values, and which JSON fields vary
//! from run to run.

use serde_json::Value;

/// `text` as a Rust string literal: raw (`r#"…"#`) when it has quotes or
/// backslashes and no control characters, so JSON reads as it was sent.
pub fn string(text: &str) -> String {
    let plain = !text.contains(['"', '\\']);
    let printable = !text.chars().any(|c| c.is_control() && c != '\n');
    if plain || !printable {
        return format!("{text:?}");
    }
    let mut hashes = String::from("#");
    while text.contains(&format!("\"{hashes}")) {
        hashes.push('#');
    }
    format!("r{hashes}\"{text}\"{hashes}")
}

/// `bytes` as a byte string literal, `b"\x00\x00\x00\x00\x07\n\x05world"`.
pub fn bytes(bytes: &[u8]) -> String {
    let mut out = String::from("b\"");
    for &byte in bytes {
        match byte {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            0x20..=0x7e => out.push(char::from(byte)),
            _ => out.push_str(&format!("\\x{byte:02x}")),
        }
    }
    out.push('"');
    out
}

/// A JSON value as a Rust expression that is `Into<serde_json::Value>`:
/// a literal for strings, numbers and booleans, `json!(…)` otherwise.
pub fn json_value(value: &Value) -> String {
    match value {
        Value::String(text) => string(text),
        Value::Bool(b) => b.to_string(),
        // An integer literal is an i32 unless it says otherwise.
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) if i32::try_from(i).is_ok() => i.to_string(),
            (Some(i), _) => format!("{i}_i64"),
            (None, Some(u)) => format!("{u}_u64"),
            // JSON has no NaN or infinity, so this prints back as it parsed.
            (None, None) => format!("{:?}_f64", n.as_f64().unwrap_or_default()),
        },
        other => format!("json!({other})"),
    }
}

/// A JSON body's leaves: the pointer to each (`/order/item`) and its
/// value, in the order the body has them. Empty arrays and objects are
/// leaves too.
pub fn leaves(value: &Value) -> Vec<(String, &Value)> {
    fn walk<'a>(at: String, value: &'a Value, out: &mut Vec<(String, &'a Value)>) {
        match value {
            Value::Object(fields) if !fields.is_empty() => {
                for (key, value) in fields {
                    walk(
                        format!("{at}/{}", key.replace('~', "~0").replace('/', "~1")),
                        value,
                        out,
                    );
                }
            }
            Value::Array(items) if !items.is_empty() => {
                for (i, value) in items.iter().enumerate() {
                    walk(format!("{at}/{i}"), value, out);
                }
            }
            leaf => out.push((at, leaf)),
        }
    }
    let mut out = Vec::new();
    walk(String::new(), value, &mut out);
    out
}

/// A pointer as the harness takes it: `item` for a field at the top,
/// `/order/item` deeper.
pub fn field(pointer: &str) -> String {
    match pointer.strip_prefix('/') {
        Some(top) if !top.contains('/') && !top.contains('~') && !top.is_empty() => top.to_owned(),
        _ => pointer.to_owned(),
    }
}

/// Whether a field is one that differs from run to run: an id, a time, a
/// token, by its name (`id`, `order_id`, `orderId`, `created_at`) or by
/// its value (a UUID, an RFC 3339 time).
pub fn varies(pointer: &str, value: &Value) -> bool {
    let name = pointer.rsplit('/').next().unwrap_or_default();
    let lower = name.to_ascii_lowercase();
    let by_name = lower == "id"
        || lower.ends_with("_id")
        || lower.ends_with("-id")
        || (name.ends_with("Id") && name.len() > 2)
        || lower.ends_with("_at")
        || [
            "uuid", "time", "date", "created", "updated", "nonce", "token", "trace", "span", "etag",
        ]
        .iter()
        .any(|word| lower.contains(word));
    let by_value = value.as_str().is_some_and(|text| uuid(text) || rfc3339(text));
    by_name || by_value
}

fn uuid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && groups.iter().all(|g| g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// `2026-12-08T01:02:03…`.
fn rfc3339(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() >= 19
        && [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18]
            .iter()
            .all(|&i| b[i].is_ascii_digit())
        && b[4] == b'-'
        && b[7] == b'-'
        && matches!(b[10], b'T' | b't' | b' ')
}

/// An identifier from `words`: `GET /checkout/tea` → `get_checkout_tea`.
pub fn identifier(words: &str) -> String {
    let mut out = String::new();
    for c in words.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('_') {
            out.push('_');
        }
    }
    let out = out.trim_matches('_').to_owned();
    match out.chars().next() {
        Some(c) if c.is_ascii_digit() => format!("_{out}"),
        None => "root".to_owned(),
        _ => out,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strings_read_as_they_were_sent() {
        assert_eq!(string("tea"), "\"tea\"");
        assert_eq!(string(r#"{"item":"tea"}"#), r##"r#"{"item":"tea"}"#"##);
        assert_eq!(string(r##"say "#hi""##), r###"r##"say "#hi""##"###);
        // A control character needs an escape, which a raw string has not.
        assert_eq!(string("a\"\u{1}"), "\"a\\\"\\u{1}\"");
    }

    #[test]
    fn bytes_escape_what_is_not_printable() {
        assert_eq!(
            bytes(b"\x00\x00\x00\x00\x07\n\x05world\"\\"),
            r#"b"\x00\x00\x00\x00\x07\n\x05world\"\\""#
        );
    }

    #[test]
    fn json_values_are_literals_that_compare_equal() {
        assert_eq!(json_value(&json!(2)), "2");
        assert_eq!(json_value(&json!(5_000_000_000_u64)), "5000000000_i64");
        assert_eq!(json_value(&json!(u64::MAX)), "18446744073709551615_u64");
        assert_eq!(json_value(&json!(3.5)), "3.5_f64");
        assert_eq!(json_value(&json!(null)), "json!(null)");
        assert_eq!(json_value(&json!([])), "json!([])");
    }

    #[test]
    fn leaves_are_pointers_to_every_value() {
        let body = json!({"order": {"item": "tea", "lines": [1, {}]}, "a/b": true});
        let found: Vec<String> = leaves(&body).into_iter().map(|(p, v)| format!("{p}={v}")).collect();
        assert_eq!(
            found,
            [
                "/a~1b=true",
                "/order/item=\"tea\"",
                "/order/lines/0=1",
                "/order/lines/1={}"
            ]
        );
        assert_eq!(field("/item"), "item");
        assert_eq!(field("/order/item"), "/order/item");
        assert_eq!(field("/a~1b"), "/a~1b");
    }

    #[test]
    fn ids_and_times_vary_and_the_rest_does_not() {
        for (pointer, value) in [
            ("/order/id", json!(3)),
            ("/charge_id", json!(1)),
            ("/orderId", json!(1)),
            ("/created_at", json!(1)),
            ("/when", json!("2026-12-08T01:02:03Z")),
            ("/key", json!("0b6f3c2e-5a1d-4c1b-9f5e-2d7a8b9c0d1e")),
        ] {
            assert!(varies(pointer, &value), "{pointer}");
        }
        for (pointer, value) in [
            ("/item", json!("tea")),
            ("/amount_cents", json!(700)),
            ("/valid", json!(true)),
        ] {
            assert!(!varies(pointer, &value), "{pointer}");
        }
    }

    #[test]
    fn identifiers_are_snake_case() {
        assert_eq!(
            identifier("GET /checkout/tea?quantity=2"),
            "get_checkout_tea_quantity_2"
        );
        assert_eq!(identifier("/greet.Greeter/SayHello"), "greet_greeter_sayhello");
        assert_eq!(identifier("1 more"), "_1_more");
        assert_eq!(identifier("///"), "root");
    }
}
