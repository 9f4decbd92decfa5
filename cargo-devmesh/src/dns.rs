//! The supervisor's DNS server, for programs that don't link devmesh (Node,
//! Python, Go): every service with a front port is `<svc>.devmesh.`, an A
//! record of 127.0.0.1, and `_<svc>._tcp.devmesh.` (or `<svc>.devmesh.`),
//! an SRV record of its front port. Services get its address as
//! `DEVMESH_DNS`. It answers for `devmesh.` only (REFUSED elsewhere: it is
//! no resolver), on UDP; a malformed query is answered FORMERR when it has
//! an id, else dropped, and never stops it.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use devmesh::dns::{self, Data, Question, Record};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use crate::proxy::Switches;

/// The zone it answers for.
pub const ZONE: &str = "devmesh";
/// Seconds an answer may be kept: front ports never change while the
/// supervisor runs, but a client should notice a new service soon.
const TTL: u32 = 5;

/// Answers queries on `socket` for the front ports in `fronts` until `shutdown`.
/// A receive that fails pauses through a [`Backoff`] said with `say`.
pub async fn serve(socket: UdpSocket, fronts: Arc<Switches>, say: crate::accept::Say, shutdown: CancellationToken) {
    let what = socket.local_addr().map_or_else(
        |_| "the DNS server".to_owned(),
        |addr| format!("the DNS server at {addr}"),
    );
    let mut backoff = crate::accept::Backoff::new(what, say);
    let mut buf = [0u8; 512];
    loop {
        let (len, from) = tokio::select! {
            () = shutdown.cancelled() => return,
            received = socket.recv_from(&mut buf) => match received {
                Ok(received) => {
                    backoff.succeeded();
                    received
                }
                Err(e) => {
                    backoff.failed(&e).await;
                    continue;
                }
            },
        };
        if let Some(reply) = reply(&buf[..len], |service| fronts.front(service)) {
            let _ = socket.send_to(&reply, from).await;
        }
    }
}

/// The reply to `query`, with `front` telling each service's front port:
/// `None` when it is too broken to answer.
pub fn reply(query: &[u8], front: impl Fn(&str) -> Option<SocketAddr>) -> Option<Vec<u8>> {
    match Question::parse(query) {
        Ok(question) => Some(answer(&question, front)),
        // With an id and a query bit, it can be told it was malformed.
        Err(_) if query.len() >= 12 && query[2] & 0x80 == 0 => {
            let mut reply = query[..12].to_vec();
            reply[2] = 0x80;
            reply[3] = dns::FORMERR;
            reply[4..12].fill(0);
            Some(reply)
        }
        Err(_) => None,
    }
}

fn answer(question: &Question, front: impl Fn(&str) -> Option<SocketAddr>) -> Vec<u8> {
    let Some(inside) = question.name.strip_suffix(ZONE).map(|n| n.trim_end_matches('.')) else {
        return question.answer(dns::REFUSED, &[], &[]);
    };
    // `orders`, `_orders._tcp`.
    let service = inside
        .strip_prefix('_')
        .and_then(|n| n.strip_suffix("._tcp"))
        .unwrap_or(inside);
    let Some(front) = front(service) else {
        return question.answer(dns::NXDOMAIN, &[], &[]);
    };
    let host = format!("{service}.{ZONE}");
    let a = Record {
        name: host.clone(),
        ttl: TTL,
        data: Data::A(Ipv4Addr::LOCALHOST),
    };
    let is_host = inside == service;
    match question.kind {
        dns::A if is_host => question.answer(dns::NOERROR, &[a], &[]),
        dns::SRV => {
            let srv = Record {
                name: question.name.clone(),
                ttl: TTL,
                data: Data::Srv {
                    priority: 0,
                    weight: 0,
                    port: front.port(),
                    target: host,
                },
            };
            question.answer(dns::NOERROR, &[srv], &[a])
        }
        // The name exists, with no record of that type (AAAA: front ports
        // are on 127.0.0.1).
        _ => question.answer(dns::NOERROR, &[], &[]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use devmesh::dns::Response;

    fn fronts(service: &str) -> Option<SocketAddr> {
        (service == "orders").then(|| "127.0.0.1:24001".parse().unwrap())
    }

    fn ask(name: &str, kind: u16) -> Response {
        let reply = reply(&Question::new(9, name, kind).to_bytes(), fronts).unwrap();
        Response::parse(&reply).unwrap()
    }

    #[test]
    fn answers_srv_and_a_for_front_ports_and_nothing_else() {
        let srv = ask("_orders._tcp.devmesh.", dns::SRV);
        assert_eq!(srv.code, dns::NOERROR);
        assert!(matches!(&srv.answers[0].data, Data::Srv { port: 24001, target, .. } if target == "orders.devmesh"));
        assert_eq!(srv.additional[0].data, Data::A(Ipv4Addr::LOCALHOST));
        assert_eq!(
            ask("ORDERS.devmesh", dns::A).answers[0].data,
            Data::A(Ipv4Addr::LOCALHOST)
        );
        let aaaa = ask("orders.devmesh", dns::AAAA);
        assert_eq!((aaaa.code, aaaa.answers.len()), (dns::NOERROR, 0));
        assert_eq!(ask("nosuch.devmesh", dns::A).code, dns::NXDOMAIN);
        assert_eq!(ask("example.com", dns::A).code, dns::REFUSED);
    }

    #[test]
    fn the_question_is_echoed_as_it_was_asked() {
        // A resolver that randomizes a name's case (DNS 0x20) checks the
        // echo; fuzzing found it lower-cased (and a long label cut).
        let mut query = Question::new(4, "orders.devmesh", dns::A).to_bytes();
        query[13..19].copy_from_slice(b"OrDeRs");
        let reply = reply(&query, fronts).unwrap();
        assert_eq!(
            &reply[12..query.len()],
            &query[12..],
            "the question section, byte for byte"
        );
        assert_eq!(
            Response::parse(&reply).unwrap().answers[0].data,
            Data::A(Ipv4Addr::LOCALHOST)
        );
    }

    #[test]
    fn garbage_gets_formerr_or_nothing() {
        let mut broken = Question::new(3, "orders.devmesh", dns::A).to_bytes();
        broken.truncate(14);
        let reply = Response::parse(&reply(&broken, fronts).unwrap()).unwrap();
        assert_eq!((reply.id, reply.code), (3, dns::FORMERR));
        assert_eq!(super::reply(b"junk", fronts), None);
    }
}
