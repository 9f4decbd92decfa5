//! `application/x-www-form-urlencoded`: query strings (`?service=orders&q=tea%20cake`)
//! and form bodies (the relay's login).

use std::collections::HashMap;

/// The query's parameters, percent-decoded (`+` is a space).
pub fn parse(query: Option<&str>) -> HashMap<String, String> {
    query
        .unwrap_or_default()
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(name), decode(value))
        })
        .collect()
}

/// `text` percent-encoded for a query, `/` kept.
pub fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => (b as char).to_string(),
            b => format!("%{b:02X}"),
        })
        .collect()
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            // Two hex digits, and nothing else (`u8::from_str_radix` would
            // take `%+1` for a byte: found by fuzzing).
            b'%' if bytes
                .get(i + 1..i + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) =>
            {
                let digit = |b: u8| (b as char).to_digit(16).expect("a hex digit") as u8;
                out.push(digit(bytes[i + 1]) * 16 + digit(bytes[i + 2]));
                i += 2;
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_names_and_values() {
        let q = parse(Some("service=orders&q=tea%20cake+pie&empty=&bad=%zz&end=%4"));
        assert_eq!(q["service"], "orders");
        assert_eq!(q["q"], "tea cake pie");
        assert_eq!(q["empty"], "");
        assert_eq!(q["bad"], "%zz");
        assert_eq!(q["end"], "%4");
    }

    #[test]
    fn forms_are_decoded_and_paths_encoded() {
        let form = parse(Some("next=%2Forders%3Fid%3D1&token=a+b%21"));
        assert_eq!(form["token"], "a b!");
        assert_eq!(form["next"], "/orders?id=1");
        assert_eq!(form.get("other"), None);
        assert_eq!(parse(Some("token=%zz%4"))["token"], "%zz%4");
        assert_eq!(
            parse(Some("a=%+1&b=%-f&c=%41"))["a"],
            "% 1",
            "`+` is a space, not a sign"
        );
        assert_eq!(parse(Some("a=%+1&b=%-f&c=%41"))["b"], "%-f");
        assert_eq!(parse(Some("a=%+1&b=%-f&c=%41"))["c"], "A");
        assert_eq!(decode(&encode("/a b?c=d&e")), "/a b?c=d&e");
    }
}
