//! Service names: DNS labels, so the same name works in the registry, in env
//! variable names, in DNS SRV records and in URLs.

use crate::Error;

/// The longest DNS label.
const MAX_LEN: usize = 63;

/// Checks that `name` is a DNS label: 1 to 63 of `a-z`, `0-9`, `-`, not
/// starting or ending with `-`.
pub fn validate(name: &str) -> Result<(), Error> {
    let reason = if name.is_empty() {
        "it is empty"
    } else if name.len() > MAX_LEN {
        "it is longer than 63 characters"
    } else if name.starts_with('-') || name.ends_with('-') {
        "it starts or ends with `-`"
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        "it has a character other than a-z, 0-9 and `-`"
    } else {
        return Ok(());
    };
    Err(Error::InvalidName {
        name: name.to_owned(),
        reason,
    })
}

/// The service name cargo would give a package: lowercase, `_` becomes `-`.
pub fn from_package(package: &str) -> String {
    package.to_ascii_lowercase().replace('_', "-")
}

/// The variable that overrides where `name` is found: `svc-b` → `DEVMESH_SVC_B_URL`.
pub fn url_env_var(name: &str) -> String {
    format!("DEVMESH_{}_URL", env_stem(name))
}

/// The variable the supervisor sets for programs that don't link devmesh:
/// `svc-b` → `DEVMESH_SVC_B_ADDR`.
pub fn addr_env_var(name: &str) -> String {
    format!("DEVMESH_{}_ADDR", env_stem(name))
}

/// The inverse of [`url_env_var`]: `DEVMESH_SVC_B_URL` → `svc-b`.
pub(crate) fn from_url_env_var(var: &str) -> Option<String> {
    let stem = var.strip_prefix("DEVMESH_")?.strip_suffix("_URL")?;
    (!stem.is_empty()).then(|| stem.to_ascii_lowercase().replace('_', "-"))
}

fn env_stem(name: &str) -> String {
    name.to_ascii_uppercase().replace('-', "_")
}

/// The closest of `candidates` to `name`, when it is close enough to be a
/// likely typo (edit distance at most a third of the name, and at least 1).
pub fn near_miss<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let allowed = (name.len() / 3).max(1);
    candidates
        .into_iter()
        .map(|c| (edit_distance(name, c), c))
        .filter(|&(d, _)| d <= allowed)
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

/// Levenshtein distance over bytes (names are ASCII).
fn edit_distance(a: &str, b: &str) -> usize {
    let b = b.as_bytes();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.bytes().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(ca != cb);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_dns_labels() {
        for ok in ["a", "svc-b", "orders2", &"x".repeat(63)] {
            validate(ok).unwrap();
        }
    }

    #[test]
    fn rejects_what_is_not_a_dns_label() {
        for (bad, why) in [
            ("", "empty"),
            ("-a", "starts or ends"),
            ("a-", "starts or ends"),
            ("Svc", "character"),
            ("svc_b", "character"),
            (&"x".repeat(64), "longer"),
        ] {
            let err = validate(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }

    #[test]
    fn env_var_names_round_trip() {
        assert_eq!(url_env_var("svc-b"), "DEVMESH_SVC_B_URL");
        assert_eq!(addr_env_var("svc-b"), "DEVMESH_SVC_B_ADDR");
        assert_eq!(from_url_env_var("DEVMESH_SVC_B_URL").as_deref(), Some("svc-b"));
        assert_eq!(from_url_env_var("DEVMESH__URL"), None);
        assert_eq!(from_url_env_var("DEVMESH_REGISTRY"), None);
        assert_eq!(from_package("My_Service"), "my-service");
    }

    #[test]
    fn near_miss_finds_typos_only() {
        let known = ["orders", "payments", "gateway"];
        assert_eq!(near_miss("ordrs", known), Some("orders"));
        assert_eq!(near_miss("payment", known), Some("payments"));
        assert_eq!(near_miss("billing", known), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
