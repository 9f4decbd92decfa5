//! Fuzzing entry points for this crate's parsers: each drives a parser as
//! discovery does, on bytes a stranger or a broken file could hold, and
//! panics when a property breaks, not only when the parser does. The
//! targets in `fuzz/` and the corpus replay in `cargo test` (both through
//! `cargo_devmesh::fuzzing`) call them. Not an API: hidden, and free to
//! change with the parsers.

use std::net::SocketAddr;
use std::path::Path;

use crate::dns::{Data, Response};
use crate::remote::dns_srv::Best;
use crate::{Endpoint, Source};

/// Bytes a resource record takes at least: a name (a root label), type,
/// class, TTL and data length.
const MIN_RECORD: usize = 11;

/// A DNS server's answer to the DNS SRV backend. It never names a port
/// or an address that is not in its bytes, and holds no more records than
/// its bytes can.
pub fn dns_answer(data: &[u8]) {
    let Ok(response) = Response::parse(data) else { return };
    let records = response.answers.iter().chain(&response.additional);
    assert!(
        records.clone().count() * MIN_RECORD <= data.len(),
        "more records than {} bytes hold",
        data.len()
    );
    for record in records {
        match &record.data {
            Data::A(ip) => assert!(holds(data, &ip.octets()), "{ip} is not in the answer"),
            Data::Aaaa(ip) => assert!(holds(data, &ip.octets()), "{ip} is not in the answer"),
            Data::Srv { port, .. } => assert!(holds(data, &port.to_be_bytes()), "port {port} is not in the answer"),
            Data::Other(_) => {}
        }
    }
    let Some(best) = Best::of(&response) else { return };
    let source = || Source::Remote {
        backend: "fuzz".to_owned(),
    };
    // As the backend reads it: with the address beside the answer, or the
    // target's name for the system's resolver.
    if let Ok(endpoint) = best.endpoint("orders", "http", best.ip, source()) {
        assert_eq!(endpoint.port(), best.port, "the endpoint's port is the SRV record's");
        match best.ip {
            Some(ip) => assert_eq!(endpoint.addr(), Some(SocketAddr::new(ip, best.port))),
            None => assert_eq!(endpoint.host(), best.target, "the endpoint's host is the SRV target"),
        }
    }
}

/// Whether `part` is somewhere in `bytes`.
fn holds(bytes: &[u8], part: &[u8]) -> bool {
    bytes.windows(part.len()).any(|w| w == part)
}

/// A registry file as a service reads it: what parses is written back the
/// same, and every entry's URL is taken or refused, never a panic.
pub fn registry(data: &[u8]) {
    let Ok(file) = crate::registry::parse(data) else { return };
    let written = serde_json::to_vec(&file).expect("a registry serializes");
    assert_eq!(
        crate::registry::parse(&written).ok(),
        Some(file.clone()),
        "written back the same"
    );
    for (name, entry) in &file.services {
        let _ = Endpoint::from_url(name, &entry.url, source());
    }
}

fn source() -> Source {
    Source::Registry {
        path: "registry.json".into(),
    }
}

/// `devmesh.toml` as `cargo devmesh` reads it: a config, or errors that
/// say what is wrong (never none, never a panic).
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(crate::Error::Config { problems, .. }) =
        crate::config::Config::from_toml(text, Path::new("devmesh.toml"))
    {
        assert!(!problems.is_empty(), "a refused config says why");
        assert!(problems.iter().all(|p| !p.is_empty()), "a problem has words");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::{Question, Record};
    use std::net::Ipv4Addr;

    fn answer(target: &str, port: u16, with_address: bool) -> Vec<u8> {
        let question = Question::new(7, "_orders._tcp.sandbox", crate::dns::SRV);
        let srv = Record {
            name: question.name.clone(),
            ttl: 5,
            data: Data::Srv {
                priority: 0,
                weight: 0,
                port,
                target: target.to_owned(),
            },
        };
        let a = Record {
            name: target.to_owned(),
            ttl: 5,
            data: Data::A(Ipv4Addr::new(10, 0, 0, 7)),
        };
        let additional: &[Record] = if with_address { &[a] } else { &[] };
        question.answer(crate::dns::NOERROR, &[srv], additional)
    }

    #[test]
    fn an_srv_target_that_is_no_host_name_names_no_other_port() {
        // A label may hold any byte: `evil:1234` would be read as a URL's
        // host and port.
        let bytes = answer("evil:1234", 8080, false);
        let best = Best::of(&Response::parse(&bytes).unwrap()).unwrap();
        assert!(best.endpoint("orders", "http", None, source()).is_err());
        dns_answer(&bytes);
        let good = answer("orders.sandbox", 8080, true);
        let best = Best::of(&Response::parse(&good).unwrap()).unwrap();
        let endpoint = best.endpoint("orders", "http", best.ip, source()).unwrap();
        assert_eq!(endpoint.url(), "http://10.0.0.7:8080");
        dns_answer(&good);
    }
}
