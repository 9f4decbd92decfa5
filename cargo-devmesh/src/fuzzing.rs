//! Fuzzing entry points: one for each parser strangers' bytes reach, each
//! driving it as the program does and panicking when a property breaks,
//! not only when the parser does. `fuzz/` runs them under libFuzzer
//! (cargo-fuzz, nightly); the test at the bottom replays every input kept
//! in `fuzz/corpus` and `fuzz/regressions`, so each `cargo test` checks
//! what fuzzing found. Not an API: hidden, and free to change with the
//! parsers.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

use crate::inspector::trace::{SpanId, Trace, TraceId, TraceParent};
use crate::proxy::http1::{Rewrites, write_request_head, write_response_head};
use crate::proxy::message::{Chunked, Framing, RequestHead, ResponseHead};
use crate::tunnel::relay::callers::{ACCESS_COOKIE, ACCESS_HEADER, FALLBACK_HEADER, Head, cookie_pairs};
use crate::tunnel::wire::{Frame, HEADER, MAX_PAYLOAD};

/// A target: bytes in, a panic when a property breaks.
pub type Target = fn(&[u8]);

/// Every target by its name in `fuzz/fuzz_targets/<name>.rs` and in the
/// corpus folders.
pub const TARGETS: &[(&str, Target)] = &[
    ("http1_request", http1_request),
    ("http1_response", http1_response),
    ("chunked", chunked),
    ("dns_server", dns_server),
    ("dns_answer", devmesh::fuzzing::dns_answer),
    ("tunnel_frames", tunnel_frames),
    ("tunnel_link", tunnel_link),
    ("relay_head", relay_head),
    ("dotenv", dotenv),
    ("form", form),
    ("registry", devmesh::fuzzing::registry),
    ("config", devmesh::fuzzing::config),
    ("relay_config", relay_config),
];

/// The target named `name` (a fuzz binary's own name).
pub fn target(name: &str) -> Target {
    TARGETS
        .iter()
        .find(|(target, _)| *target == name)
        .map(|(_, run)| *run)
        .unwrap_or_else(|| panic!("no fuzz target is named `{name}`"))
}

/// A header line as a service sees it: the name lower-cased, the value's bytes.
type Field = (String, Vec<u8>);

/// The header lines of a whole head, in order.
fn fields(head: &[u8]) -> Vec<Field> {
    let mut lines = [httparse::EMPTY_HEADER; 128];
    let mut request = httparse::Request::new(&mut lines);
    match request.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        other => panic!("not a whole head ({other:?}): {:?}", String::from_utf8_lossy(head)),
    }
    request
        .headers
        .iter()
        .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
        .collect()
}

/// A request head through a front port. What it parses is what it sends
/// on: one head in, one head out, framed as it came (no smuggling), with
/// the client's lines but for those the front port owns, and of each of
/// those exactly the one it put there.
pub fn http1_request(data: &[u8]) {
    let Ok(Some(request)) = RequestHead::parse(data) else {
        return;
    };
    let head = &data[..request.len];
    if request.ambiguous.is_some() {
        return; // answered 400, never sent on
    }
    let ours = Trace {
        header: TraceParent::new(
            TraceId(0x0af7_6519_16cd_43dd_8448_eb21_1c80_319c),
            SpanId(0xb7ad_6b71_6920_3331),
        ),
        parent: None,
        inferred: false,
    };
    let cases = [
        // A service here, capture off.
        (Rewrites::default(), None),
        // A remote instance, captured, on a developer's route.
        (
            Rewrites {
                host: Some("orders.sandbox:8080"),
                baggage: Some("devmesh-route=alice"),
                ..Rewrites::default()
            },
            Some(ours),
        ),
        // Routed to a developer's copy through the relay.
        (
            Rewrites {
                host: Some("relay:31000"),
                access: Some("sandbox-token"),
                fallback: true,
                ..Rewrites::default()
            },
            Some(ours),
        ),
    ];
    let client = fields(head);
    for (rewrites, trace) in cases {
        let mut out = Vec::new();
        write_request_head(&mut out, head, &request, trace, rewrites);
        let sent = match RequestHead::parse_as_sent(&out) {
            Ok(Some(sent)) => sent,
            other => panic!(
                "the head sent does not parse ({other:?}): {:?}",
                String::from_utf8_lossy(&out)
            ),
        };
        assert_eq!(
            sent.len,
            out.len(),
            "one head in, one head out: {:?}",
            String::from_utf8_lossy(&out)
        );
        assert_eq!(
            (sent.method(&out), sent.target(&out), sent.minor, sent.body),
            (request.method(head), request.target(head), request.minor, request.body),
            "the request line and framing pass as they came"
        );
        assert!(sent.ambiguous.is_none());
        assert_eq!(fields(&out), sent_fields(&client, rewrites, trace), "{rewrites:?}");
    }
}

/// The lines a service should see of a client's `client`.
fn sent_fields(client: &[Field], rewrites: Rewrites<'_>, trace: Option<Trace>) -> Vec<Field> {
    let for_relay = rewrites.host.is_none() || rewrites.access.is_some();
    let owned = |name: &str| match name {
        crate::inspector::REPLAY_HEADER => true,
        "traceparent" => trace.is_some(),
        "host" => rewrites.host.is_some(),
        "baggage" => rewrites.baggage.is_some(),
        ACCESS_HEADER | FALLBACK_HEADER => for_relay,
        _ => false,
    };
    let mut sent: Vec<Field> = client.iter().filter(|(name, _)| !owned(name)).cloned().collect();
    let mut put = |name: &str, value: &[u8]| sent.push((name.to_owned(), value.to_vec()));
    if let Some(host) = rewrites.host {
        put("host", host.as_bytes());
    }
    if let Some(trace) = trace {
        put("traceparent", &trace.header.header());
    }
    if let Some(baggage) = rewrites.baggage {
        put("baggage", baggage.as_bytes());
    }
    if let Some(access) = rewrites.access {
        put(ACCESS_HEADER, access.as_bytes());
    }
    if rewrites.fallback {
        put(FALLBACK_HEADER, b"own");
    }
    sent
}

/// A service's response head, to a GET and to a HEAD. The head the
/// client gets parses to the same status and framing, and a chunked body
/// comes with no `Content-Length` beside it.
pub fn http1_response(data: &[u8]) {
    for method in ["GET", "HEAD"] {
        let asked = format!("{method} / HTTP/1.1\r\nhost: a\r\n\r\n");
        let request = RequestHead::parse(asked.as_bytes()).unwrap().unwrap();
        let Ok(Some(head)) = ResponseHead::parse(data, &request) else {
            continue;
        };
        let mut out = Vec::new();
        write_response_head(&mut out, data, &head, Some(7));
        let passed = match ResponseHead::parse(&out, &request) {
            Ok(Some(passed)) => passed,
            other => panic!(
                "the head passed on does not parse ({other:?}): {:?}",
                String::from_utf8_lossy(&out)
            ),
        };
        assert_eq!(passed.len, out.len(), "one head in, one head out");
        assert_eq!((passed.status, passed.body), (head.status, head.body));
        if head.body == Framing::Chunked {
            let mut lines = [httparse::EMPTY_HEADER; 128];
            let mut response = httparse::Response::new(&mut lines);
            let _ = response.parse(&out);
            assert!(
                !response
                    .headers
                    .iter()
                    .any(|h| h.name.eq_ignore_ascii_case("content-length")),
                "a chunked body is not also framed by a length"
            );
        }
    }
}

/// A chunked body, followed as it passes: cut into reads anywhere, it
/// ends at the same byte with the same data, and never yields more data
/// than it was given.
pub fn chunked(data: &[u8]) {
    let Some((&step, body)) = data.split_first() else {
        return;
    };
    let whole = follow(body, body.len().max(1));
    assert_eq!(
        whole,
        follow(body, usize::from(step % 16) + 1),
        "the same body read in pieces"
    );
    if let Ok((used, data, _)) = whole {
        assert!(data.len() <= used && used <= body.len());
    }
}

/// The bytes of the body, its data, and whether it ended, read `step` bytes at a time.
fn follow(body: &[u8], step: usize) -> Result<(usize, Vec<u8>, bool), crate::proxy::message::ChunkError> {
    let mut chunked = Chunked::default();
    let (mut used, mut data) = (0, Vec::new());
    for piece in body.chunks(step) {
        let took = chunked.scan(piece, |bytes| data.extend_from_slice(bytes))?;
        used += took;
        if took < piece.len() || chunked.done() {
            break;
        }
    }
    Ok((used, data, chunked.done()))
}

/// A question to the supervisor's DNS server. The answer is a DNS
/// message to the same question, within UDP's 512 bytes, naming only the
/// front port it has.
pub fn dns_server(data: &[u8]) {
    let front = SocketAddr::from((Ipv4Addr::LOCALHOST, 24001));
    let Some(reply) = crate::dns::reply(data, |service| (service == "orders").then_some(front)) else {
        return;
    };
    assert!(
        reply.len() <= 512,
        "an answer of {} bytes does not fit UDP's 512",
        reply.len()
    );
    let response = devmesh::dns::Response::parse(&reply).expect("the reply is a DNS message");
    assert_eq!(&reply[..2], &data[..2], "the reply has the query's id");
    for record in response.answers.iter().chain(&response.additional) {
        match &record.data {
            devmesh::dns::Data::Srv { port, .. } => assert_eq!(*port, front.port()),
            devmesh::dns::Data::A(ip) => assert_eq!(*ip, Ipv4Addr::LOCALHOST),
            other => panic!("the server answered {other:?}"),
        }
    }
    if let Ok(question) = devmesh::dns::Question::parse(data) {
        let mut echoed = reply.clone();
        echoed[2] &= 0x7f;
        let echoed = devmesh::dns::Question::parse(&echoed).expect("the reply holds the question");
        assert_eq!(echoed, question, "the reply's question is the one asked");
    }
}

/// The tunnel's frames, as a link reads them: each whole frame is what
/// its bytes encode, none is taken before its last byte came, and none
/// allocates more than its bytes.
pub fn tunnel_frames(data: &[u8]) {
    let mut at = 0;
    while let Ok(Some((frame, used))) = Frame::decode(&data[at..]) {
        assert!((HEADER..=HEADER + MAX_PAYLOAD).contains(&used) && at + used <= data.len());
        let mut encoded = Vec::new();
        frame.encode(&mut encoded);
        assert_eq!(encoded, &data[at..at + used], "a frame is what its bytes say");
        assert!(
            matches!(Frame::decode(&data[at..at + used - 1]), Ok(None)),
            "a frame waits for its last byte"
        );
        at += used;
    }
}

/// A link to a peer that sends a frame stream made from `data`: valid
/// frames (opens, data, credit, closes, pings) with fields from the input,
/// mixed with ones that break the protocol. The link serves a peer that
/// keeps to it (it answers a last PING) and closes on one that does not:
/// never a panic, a hang, or bytes held past a stream's window.
pub fn tunnel_link(data: &[u8]) {
    let script = link_script::of(data);
    thread_local! {
        static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
    }
    RUNTIME.with(|runtime| runtime.block_on(link_script::play(script)));
}

mod link_script {
    use std::collections::HashMap;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::mpsc;

    use crate::tunnel::link::{Link, Side, WINDOW};
    use crate::tunnel::wire::{Frame, HEADER, Kind, MAX_PAYLOAD};

    /// Bytes for the link, and whether they break the protocol.
    pub struct Script {
        bytes: Vec<u8>,
        pings: usize,
        breaks: Option<String>,
    }

    /// The peer is the relay: its streams are odd; the link's own even.
    pub fn of(data: &[u8]) -> Script {
        let mut input = data.iter().copied();
        let mut next = move || input.next();
        let mut script = Script {
            bytes: Vec::new(),
            pings: 0,
            breaks: None,
        };
        // Per stream the peer opened: bytes sent to it (no credit comes
        // back: nobody reads), and whether the peer closed it.
        let mut open: HashMap<u32, (usize, bool)> = HashMap::new();
        while script.breaks.is_none() {
            let Some(op) = next() else { break };
            let stream = u32::from(next().unwrap_or(1));
            let frame = match op % 10 {
                0 => {
                    if stream % 2 == 0 || open.contains_key(&stream) {
                        script.breaks = Some(format!("opens stream {stream}"));
                    }
                    open.insert(stream, (0, false));
                    Frame::new(Kind::Open, stream, b"orders".to_vec())
                }
                kind @ (1 | 2) => {
                    let len = match kind {
                        1 => usize::from(next().unwrap_or(0)),
                        _ => MAX_PAYLOAD,
                    };
                    let payload: Vec<u8> = (0..len).map(|_| next().unwrap_or(0)).collect();
                    if let Some((sent, false)) = open.get_mut(&stream) {
                        *sent += len;
                        if *sent > WINDOW as usize {
                            script.breaks = Some(format!("sends past stream {stream}'s window"));
                        }
                    }
                    Frame::new(Kind::Data, stream, payload)
                }
                3 => {
                    let credit = [(); 4].map(|()| next().unwrap_or(0));
                    // The link sent nothing: any credit is more than it sent.
                    if open.contains_key(&stream) && u32::from_be_bytes(credit) > 0 {
                        script.breaks = Some(format!("gives stream {stream} credit it never used"));
                    }
                    Frame::new(Kind::Window, stream, credit.to_vec())
                }
                4 => {
                    script.breaks = Some("sends a WINDOW frame of 3 bytes".to_owned());
                    Frame::new(Kind::Window, stream, vec![0, 0, 1])
                }
                5 => {
                    if let Some(state) = open.get_mut(&stream) {
                        state.1 = true;
                    }
                    Frame::new(Kind::Close, stream, Vec::new())
                }
                6 => {
                    script.pings += 1;
                    Frame::new(Kind::Ping, 0, Vec::new())
                }
                7 => Frame::new(Kind::Pong, 0, Vec::new()),
                8 => {
                    script.breaks = Some("sends a HELLO mid-link".to_owned());
                    Frame::new(Kind::Hello, 0, b"{}".to_vec())
                }
                _ => {
                    // One field of a header broken: an unknown kind, or a
                    // length past the largest payload.
                    script.breaks = Some("sends a frame that is no frame".to_owned());
                    let mut header = [0u8; HEADER];
                    if stream % 2 == 0 {
                        header[0] = Kind::Data as u8;
                        header[5..].copy_from_slice(&(MAX_PAYLOAD as u32 + 1 + stream).to_be_bytes());
                    } else {
                        header[0] = 10 + (stream % 240) as u8;
                    }
                    script.bytes.extend_from_slice(&header);
                    continue;
                }
            };
            frame.encode(&mut script.bytes);
        }
        // The last: answered only by a link that is still up.
        script.pings += 1;
        Frame::new(Kind::Ping, 0, Vec::new()).encode(&mut script.bytes);
        script
    }

    pub async fn play(script: Script) {
        let (ours, peer) = tokio::io::duplex(4 * MAX_PAYLOAD);
        let (opened, _streams) = mpsc::unbounded_channel();
        let link = Link::run(ours, Vec::new(), opened, Side::Supervisor);
        let (mut from_link, mut to_link) = tokio::io::split(peer);
        let send = async {
            let _ = to_link.write_all(&script.bytes).await;
            to_link
        };
        // Pongs the link sends until it has answered every ping, or closes.
        // The streams it opened for the peer wait in `streams`, unread: no
        // credit goes back.
        let hear = async {
            let (mut read, mut pongs) = (Vec::new(), 0);
            loop {
                while let Ok(Some((frame, used))) = Frame::decode(&read) {
                    read.drain(..used);
                    pongs += usize::from(frame.kind == Kind::Pong);
                }
                if pongs == script.pings {
                    return true;
                }
                match from_link.read_buf(&mut read).await {
                    Ok(0) | Err(_) => return false,
                    Ok(_) => {}
                }
            }
        };
        let played = tokio::time::timeout(Duration::from_secs(10), async { tokio::join!(send, hear) }).await;
        let (_writer, answered) = played.unwrap_or_else(|_| panic!("the link neither answered nor closed"));
        match &script.breaks {
            Some(why) => assert!(!answered, "the link served a peer that {why}"),
            None => assert!(
                answered && link.is_alive(),
                "the link closed on a peer that kept to the protocol"
            ),
        }
        link.close();
    }
}

/// A caller's request head at the relay. What it sends on is the same
/// request, without the team's token or session anywhere in it.
pub fn relay_head(data: &[u8]) {
    let Ok(head) = Head::parse(data.to_vec()) else { return };
    let forwarded = head.forwarded();
    let head_end = |bytes: &[u8]| match httparse::Request::new(&mut [httparse::EMPTY_HEADER; 128]).parse(bytes) {
        Ok(httparse::Status::Complete(len)) => len,
        other => panic!("not a whole head ({other:?}): {:?}", String::from_utf8_lossy(bytes)),
    };
    let (end, went_end) = (head_end(data), head_end(&forwarded));
    let (came, went) = (&data[..end], &forwarded[..]);
    assert_eq!(
        &went[went_end..],
        &data[end..],
        "what follows the head goes on as it came"
    );
    let line = |head: &[u8]| head.split(|&b| b == b'\n').next().map(<[u8]>::to_vec);
    assert_eq!(line(came), line(went), "the request line goes on as it came");
    let is_relays = |(name, value): &Field| {
        name == ACCESS_HEADER
            || name == FALLBACK_HEADER
            || (name == "cookie" && cookie_pairs(value).any(|pair| pair.name == ACCESS_COOKIE.as_bytes()))
    };
    let sent = fields(&went[..went_end]);
    assert!(
        !sent.iter().any(is_relays),
        "the relay's lines went on: {:?}",
        String::from_utf8_lossy(went)
    );
    let others = |fields: Vec<Field>| -> Vec<Field> { fields.into_iter().filter(|f| f.0 != "cookie").collect() };
    let kept: Vec<Field> = fields(came).into_iter().filter(|f| !is_relays(f)).collect();
    assert_eq!(others(sent), others(kept), "every other line goes on as it came");
}

/// A `.env` file: what it says, written back in double quotes, reads the same.
pub fn dotenv(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(vars) = crate::dotenv::parse(text) else { return };
    let written: String = vars
        .iter()
        .map(|(key, value)| {
            let quoted = value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
            format!("{key}=\"{quoted}\"\n")
        })
        .collect();
    assert_eq!(crate::dotenv::parse(&written), Ok(vars), "read back from {written:?}");
}

/// A query string or form: decoded as the form's rules say (checked
/// against a decoder written from them), and what is encoded decodes back.
pub fn form(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let parsed = crate::form::parse(Some(&text));
    let mut expected = std::collections::HashMap::new();
    for pair in text.split('&').filter(|pair| !pair.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        expected.insert(by_the_rules(name), by_the_rules(value));
    }
    assert_eq!(parsed, expected, "decoded as the rules say");
    let encoded = crate::form::encode(&text);
    let back = crate::form::parse(Some(&format!("v={encoded}")));
    assert_eq!(
        back.get("v").map(String::as_str),
        Some(&*text),
        "encoded and decoded back"
    );
}

/// `application/x-www-form-urlencoded` decoding (WHATWG URL §5.1): `+` is
/// a space, `%` and two hex digits a byte, anything else itself.
fn by_the_rules(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'+', ..) => out.push(b' '),
            (b'%', Some(high), Some(low)) => {
                out.push((high * 16 + low) as u8);
                i += 2;
            }
            (byte, ..) => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The relay's config file: a config, or problems in words.
pub fn relay_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(error) = crate::tunnel::relay::RelayConfig::from_toml(text, Path::new("relay.toml")) {
        assert!(!error.problems.is_empty() && error.problems.iter().all(|p| !p.is_empty()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fuzz_dir() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
    }

    /// Every input fuzzing kept (the seeds, the corpus it grew, and each
    /// input that once broke a property) keeps its properties.
    #[test]
    fn every_kept_fuzz_input_keeps_its_properties() {
        let mut replayed = 0;
        for (name, target) in TARGETS {
            for folder in ["corpus", "regressions"] {
                let Ok(inputs) = std::fs::read_dir(fuzz_dir().join(folder).join(name)) else {
                    continue;
                };
                for input in inputs {
                    let path = input.unwrap().path();
                    let bytes = std::fs::read(&path).unwrap();
                    let outcome = std::panic::catch_unwind(|| target(&bytes));
                    assert!(outcome.is_ok(), "{name}: {} breaks a property", path.display());
                    replayed += 1;
                }
            }
        }
        assert!(replayed >= TARGETS.len(), "the corpus is there ({replayed} inputs)");
    }

    /// A target here is a target there, and the other way round.
    #[test]
    fn every_target_has_its_fuzz_binary() {
        let listed: std::collections::BTreeSet<String> = TARGETS.iter().map(|(name, _)| (*name).to_owned()).collect();
        let binaries: std::collections::BTreeSet<String> = std::fs::read_dir(fuzz_dir().join("fuzz_targets"))
            .unwrap()
            .map(|e| e.unwrap().path().file_stem().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(listed, binaries);
    }
}
