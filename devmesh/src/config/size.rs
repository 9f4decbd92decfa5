//! Sizes in config: `"10MiB"`, `"512KiB"`, `"1GiB"`, or a number of bytes.

use serde::{Deserialize, Deserializer};

const EXPECTED: &str = "a size like `10MiB`, `512KiB` or a number of bytes";

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Given {
        Bytes(u64),
        Text(String),
    }
    match Given::deserialize(d)? {
        Given::Bytes(bytes) => Ok(bytes),
        Given::Text(text) => {
            parse(&text).ok_or_else(|| serde::de::Error::invalid_value(serde::de::Unexpected::Str(&text), &EXPECTED))
        }
    }
}

pub fn parse(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let unit: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KB" | "KiB" => 1 << 10,
        "M" | "MB" | "MiB" => 1 << 20,
        "G" | "GB" | "GiB" => 1 << 30,
        _ => return None,
    };
    number.checked_mul(unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bytes_and_binary_units() {
        assert_eq!(parse("10MiB"), Some(10 << 20));
        assert_eq!(parse("512 KiB"), Some(512 << 10));
        assert_eq!(parse("4096"), Some(4096));
        assert_eq!(parse("1GB"), Some(1 << 30));
        assert_eq!(parse("ten"), None);
        assert_eq!(parse("3TB"), None);
    }
}
