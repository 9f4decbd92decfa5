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
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(byte) => {
                        out.push(byte);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
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
        assert_eq!(decode(&encode("/a b?c=d&e")), "/a b?c=d&e");
    }
}
