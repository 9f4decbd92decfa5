//! HTTP/1 messages as the proxy sees them: where a head ends, what it says
//! about the connection, and where the body after it ends (RFC 9112).
//!
//! The proxy forwards bytes as they came; it parses only what it needs to
//! find message boundaries and to capture.

use std::ops::Range;

use crate::inspector::REPLAY_HEADER;
use crate::inspector::trace::TraceParent;

/// More headers than this is a 431.
const MAX_HEADERS: usize = 100;

/// Why a head could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("the message head is not valid HTTP/1: {0}")]
    Malformed(httparse::Error),
    #[error(
        "the message has more header lines than a front port takes: {} in a request (it adds lines of its own), {MAX_HEADERS} in a response",
        MAX_HEADERS - Owned::ALL.len()
    )]
    TooManyHeaders,
    #[error("the message's length cannot be told: {0}")]
    Length(&'static str),
    #[error("`{0}` is not an HTTP method (hint: methods are case-sensitive{hint})", hint = upper_hint(.0))]
    UnknownMethod(String),
}

/// `: `GET`` for a method that is a known one in the wrong case.
fn upper_hint(method: &str) -> String {
    let upper = method.to_ascii_uppercase();
    match Method::of(&upper) {
        Some(_) => format!(": `{upper}`"),
        None => String::new(),
    }
}

/// The methods a front port forwards: RFC 9110's, PATCH, and WebDAV's.
/// Others are refused, so a typo or a lowercase `get` is told, not
/// forwarded to a service that may treat it as anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Method {
    /// Whether sending it twice has the effect of sending it once (RFC 9110
    /// §9.2.2): only such a request is sent again on a new connection.
    pub idempotent: bool,
}

impl Method {
    pub fn of(name: &str) -> Option<Method> {
        const IDEMPOTENT: [&str; 11] = [
            "GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE", "PROPFIND", "REPORT", "SEARCH", "COPY", "MKCOL",
        ];
        const OTHERS: [&str; 12] = [
            "POST",
            "PATCH",
            "CONNECT",
            "PROPPATCH",
            "MOVE",
            "LOCK",
            "UNLOCK",
            "MKCALENDAR",
            "ACL",
            "MERGE",
            "CHECKOUT",
            "QUERY",
        ];
        if IDEMPOTENT.contains(&name) {
            Some(Method { idempotent: true })
        } else if OTHERS.contains(&name) {
            Some(Method { idempotent: false })
        } else {
            None
        }
    }
}

impl From<httparse::Error> for HeadError {
    fn from(e: httparse::Error) -> HeadError {
        match e {
            httparse::Error::TooManyHeaders => HeadError::TooManyHeaders,
            e => HeadError::Malformed(e),
        }
    }
}

/// How a message's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// This many bytes (0: no body).
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the sender closes (responses only).
    UntilClose,
}

/// What the proxy needs of a request head.
#[derive(Debug)]
pub struct RequestHead {
    /// Bytes of the head, through its blank line.
    pub len: usize,
    /// Where the header lines start, after the request line.
    pub fields_at: usize,
    /// Where the blank line that ends the head starts.
    pub blank_at: usize,
    /// Where the method is in the head.
    pub method: Range<usize>,
    /// Where the request target (path and query, as sent) is in the head.
    pub target: Range<usize>,
    /// A `HEAD` request: its response has no body.
    pub is_head: bool,
    /// Whether the request may be sent a second time (see [`Method`]).
    pub idempotent: bool,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    pub body: Framing,
    /// Whether it waits for a `100 Continue` before sending its body.
    pub expects_continue: bool,
    /// Whether the client lets the connection carry another request.
    pub keep_alive: bool,
    /// The protocol asked for with `Upgrade` (and `Connection: upgrade`).
    pub upgrade: Option<String>,
    /// The `traceparent` it came with, when it is a valid one.
    pub traceparent: Option<TraceParent>,
    /// Where the [`REPLAY_HEADER`]'s value is (checked by the inspector: a
    /// client may send one).
    pub replay: Option<Range<usize>>,
    /// Where the `baggage` value is (a developer's route travels in it:
    /// `devmesh::route`).
    pub baggage: Option<Range<usize>>,
    /// The lines the front port owns, each of them wherever it is.
    pub owned: OwnedLines,
    /// Why its body's framing cannot be trusted: such a request is answered
    /// 400 by the front port (and captured so), never forwarded.
    pub ambiguous: Option<&'static str>,
}

/// Header lines a front port owns: it takes them out, or puts its own in
/// their place, so the service sees none of the client's. A client may send
/// any of them twice, or one that is not valid: every line of the name goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owned {
    /// [`REPLAY_HEADER`]: the inspector's, never a service's.
    Replay,
    /// Replaced by the front port's own span when traffic is captured.
    TraceParent,
    /// A remote instance is asked with its own.
    Host,
    /// Replaced when the request leaves on a developer's route.
    Baggage,
    /// The lines meant for the relay (`x-devmesh-access`,
    /// `x-devmesh-fallback`), which a service never sees: a kept connection
    /// through the relay brings them past it after its first request.
    Access,
    Fallback,
}

impl Owned {
    const ALL: [Owned; 6] = [
        Owned::Replay,
        Owned::TraceParent,
        Owned::Host,
        Owned::Baggage,
        Owned::Access,
        Owned::Fallback,
    ];

    fn name(self) -> &'static str {
        use crate::tunnel::relay::callers::{ACCESS_HEADER, FALLBACK_HEADER};
        match self {
            Owned::Replay => REPLAY_HEADER,
            Owned::TraceParent => "traceparent",
            Owned::Host => "host",
            Owned::Baggage => devmesh::route::HEADER,
            Owned::Access => ACCESS_HEADER,
            Owned::Fallback => FALLBACK_HEADER,
        }
    }

    fn of(name: &str) -> Option<Owned> {
        Owned::ALL
            .into_iter()
            .find(|owned| name.eq_ignore_ascii_case(owned.name()))
    }
}

/// Where the [`Owned`] lines of a head are: the first of each name, and
/// any more (rare, so kept apart: a head with none allocates nothing).
#[derive(Debug, Clone, Default)]
pub struct OwnedLines {
    first: [Option<Range<usize>>; 6],
    more: Vec<(Owned, Range<usize>)>,
}

impl OwnedLines {
    fn add(&mut self, which: Owned, line: Range<usize>) {
        match &mut self.first[which as usize] {
            slot @ None => *slot = Some(line),
            Some(_) => self.more.push((which, line)),
        }
    }

    /// Whether the head has a line of this name.
    pub fn has(&self, which: Owned) -> bool {
        self.first[which as usize].is_some()
    }

    /// Every line of the names `taken` says, in the order of the head.
    pub fn lines(&self, taken: impl Fn(Owned) -> bool) -> impl Iterator<Item = Range<usize>> {
        let mut lines: Vec<Range<usize>> = Vec::new();
        let firsts = Owned::ALL.into_iter().zip(&self.first);
        let firsts = firsts.filter_map(|(which, line)| line.clone().filter(|_| taken(which)));
        let more = self
            .more
            .iter()
            .filter(|(which, _)| taken(*which))
            .map(|(_, line)| line.clone());
        // Six at most without `more`: sorted in place, with no allocation
        // (a `Vec` of none allocates nothing).
        let mut few: [Option<Range<usize>>; 6] = Default::default();
        if self.more.is_empty() {
            for (slot, line) in few.iter_mut().zip(firsts) {
                *slot = Some(line);
            }
            few.sort_by_key(|line| line.as_ref().map_or(usize::MAX, |l| l.start));
        } else {
            lines.extend(firsts.chain(more));
            lines.sort_by_key(|line| line.start);
        }
        few.into_iter().flatten().chain(lines)
    }
}

/// What the proxy needs of a response head.
#[derive(Debug)]
pub struct ResponseHead {
    pub len: usize,
    pub fields_at: usize,
    pub blank_at: usize,
    pub status: u16,
    pub body: Framing,
    /// Whether the service lets the connection carry another request.
    pub keep_alive: bool,
    /// `Content-Length` lines beside a chunked body: the body is relayed as
    /// it is framed (chunked), so they are taken off (RFC 9112 §6.3), lest
    /// a client that frames by the length read the rest as a second answer.
    pub stale_length: Vec<Range<usize>>,
    /// Whether a line may be added and the head still be one a front port
    /// (this one's parser, at a caller) takes: fewer than `MAX_HEADERS`.
    pub has_room: bool,
}

impl RequestHead {
    /// Parses a request head at the start of `buf`; `None` until it is
    /// whole. It may have [`MAX_HEADERS`] lines less room for a front
    /// port's own: what is sent on then has no more than a service built on
    /// hyper takes (100).
    pub fn parse(buf: &[u8]) -> Result<Option<RequestHead>, HeadError> {
        RequestHead::parse_within(buf, MAX_HEADERS - Owned::ALL.len())
    }

    /// Parses a head as a front port sends it on, of up to [`MAX_HEADERS`]
    /// lines: what a service sees (checked by `fuzzing`).
    pub fn parse_as_sent(buf: &[u8]) -> Result<Option<RequestHead>, HeadError> {
        RequestHead::parse_within(buf, MAX_HEADERS)
    }

    fn parse_within(buf: &[u8], most_lines: usize) -> Result<Option<RequestHead>, HeadError> {
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut fields);
        let httparse::Status::Complete(len) = request.parse(buf)? else {
            return Ok(None);
        };
        let minor = request.version.unwrap_or(1);
        // A whole head has both.
        let (Some(method), Some(target)) = (request.method, request.path) else {
            return Err(HeadError::Malformed(httparse::Error::Token));
        };
        let known = Method::of(method).ok_or_else(|| HeadError::UnknownMethod(method.to_owned()))?;
        let connection = ConnectionHeader::of(request.headers, minor);
        let body = match message_length(request.headers)? {
            Some(Framing::UntilClose) => {
                return Err(HeadError::Length("a request's transfer coding must end in chunked"));
            }
            Some(framing) => framing,
            None => Framing::Length(0),
        };
        let upgrade = connection
            .upgrade
            .then(|| value(request.headers, "upgrade"))
            .flatten()
            .map(str::to_owned);
        let mut owned = OwnedLines::default();
        let (mut traceparent, mut replay, mut baggage) = (None, None, None);
        if request.headers.len() > most_lines {
            return Err(HeadError::TooManyHeaders);
        }
        for h in request.headers.iter() {
            let Some(which) = Owned::of(h.name) else { continue };
            let first = !owned.has(which);
            owned.add(which, line_of(buf, h.name.as_bytes(), h.value));
            match which {
                Owned::TraceParent if first => {
                    traceparent = std::str::from_utf8(h.value).ok().and_then(TraceParent::parse);
                }
                Owned::Replay if first => replay = Some(span(buf, h.value)),
                Owned::Baggage if first => baggage = Some(span(buf, h.value)),
                _ => {}
            }
        }
        Ok(Some(RequestHead {
            len,
            fields_at: fields_start(buf),
            blank_at: blank_start(buf, len),
            method: span(buf, method.as_bytes()),
            target: span(buf, target.as_bytes()),
            is_head: method == "HEAD",
            idempotent: known.idempotent,
            minor,
            keep_alive: connection.keep_alive,
            ambiguous: ambiguous(request.headers, minor),
            expects_continue: value(request.headers, "expect")
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("100-continue")),
            body,
            upgrade,
            traceparent,
            replay,
            baggage,
            owned,
        }))
    }

    /// Whether its sender has a copy of its own to go to (it came from a
    /// sandbox's front port, routed here).
    pub fn has_fallback(&self) -> bool {
        self.owned.has(Owned::Fallback)
    }

    /// The route it carries in its `baggage`, in `head` (as it came).
    pub fn route<'h>(&self, head: &'h [u8]) -> Option<&'h str> {
        let value = self.baggage.as_ref()?;
        devmesh::route::of_baggage(std::str::from_utf8(&head[value.clone()]).ok()?)
    }

    /// The method, in `head` (this head, or the head as forwarded: the
    /// request line passes unchanged).
    pub fn method<'h>(&self, head: &'h [u8]) -> &'h str {
        text(&head[self.method.clone()])
    }

    /// The request target, in `head` as for [`RequestHead::method`].
    pub fn target<'h>(&self, head: &'h [u8]) -> &'h str {
        text(&head[self.target.clone()])
    }
}

/// Bytes httparse has checked are text.
fn text(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).unwrap_or_default()
}

impl ResponseHead {
    /// Parses a response head at the start of `buf`, to `request`;
    /// `None` until it is whole.
    pub fn parse(buf: &[u8], request: &RequestHead) -> Result<Option<ResponseHead>, HeadError> {
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut fields);
        let httparse::Status::Complete(len) = response.parse(buf)? else {
            return Ok(None);
        };
        let status = response.code.unwrap_or(500);
        let connection = ConnectionHeader::of(response.headers, response.version.unwrap_or(1));
        let body = if request.is_head || (100..200).contains(&status) || status == 204 || status == 304 {
            Framing::Length(0)
        } else {
            message_length(response.headers)?.unwrap_or(Framing::UntilClose)
        };
        let stale_length = match body {
            Framing::Chunked => response
                .headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
                .map(|h| line_of(buf, h.name.as_bytes(), h.value))
                .collect(),
            _ => Vec::new(),
        };
        Ok(Some(ResponseHead {
            len,
            fields_at: fields_start(buf),
            blank_at: blank_start(buf, len),
            status,
            keep_alive: connection.keep_alive && body != Framing::UntilClose,
            body,
            has_room: response.headers.len() - stale_length.len() < MAX_HEADERS,
            stale_length,
        }))
    }

    /// An interim response (`100 Continue`, `103 Early Hints`): the final one follows.
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status) && self.status != 101
    }
}

/// What the `Connection` header says.
struct ConnectionHeader {
    keep_alive: bool,
    upgrade: bool,
}

impl ConnectionHeader {
    fn of(headers: &[httparse::Header<'_>], minor: u8) -> ConnectionHeader {
        let (mut close, mut keep_alive, mut upgrade) = (false, false, false);
        for token in tokens(headers, "connection") {
            close |= token.eq_ignore_ascii_case("close");
            keep_alive |= token.eq_ignore_ascii_case("keep-alive");
            upgrade |= token.eq_ignore_ascii_case("upgrade");
        }
        ConnectionHeader {
            keep_alive: !close && (minor >= 1 || keep_alive),
            upgrade,
        }
    }
}

/// The body's framing from `Transfer-Encoding` and `Content-Length`, or
/// `None` when neither is present.
fn message_length(headers: &[httparse::Header<'_>]) -> Result<Option<Framing>, HeadError> {
    if let Some(last) = tokens(headers, "transfer-encoding").last() {
        return Ok(Some(if last.eq_ignore_ascii_case("chunked") {
            Framing::Chunked
        } else {
            Framing::UntilClose
        }));
    }
    let mut length = None;
    for token in tokens(headers, "content-length") {
        let parsed = (!token.is_empty() && token.bytes().all(|b| b.is_ascii_digit()))
            .then(|| token.parse::<u64>().ok())
            .flatten()
            .ok_or(HeadError::Length("`Content-Length` is not a number"))?;
        if length.is_some_and(|l| l != parsed) {
            return Err(HeadError::Length("`Content-Length` is given twice, differently"));
        }
        length = Some(parsed);
    }
    Ok(length.map(Framing::Length))
}

/// Why a request's framing is ambiguous, if it is (RFC 9112 §6.1, §6.3).
/// With both `Transfer-Encoding` and `Content-Length`, a service that
/// frames by the length reads the chunked body's bytes as a second,
/// hidden request (or waits for bytes that never come): a proxy must
/// not pass such a request on as it came. HTTP/1.0 has no transfer
/// codings, so a 1.0 request with one is framed differently by each
/// reader. Such requests are refused, as nginx, HAProxy and Envoy do.
fn ambiguous(headers: &[httparse::Header<'_>], minor: u8) -> Option<&'static str> {
    let has = |name: &str| headers.iter().any(|h| h.name.eq_ignore_ascii_case(name));
    if !has("transfer-encoding") {
        None
    } else if has("content-length") {
        Some("the request has both `Transfer-Encoding` and `Content-Length`, which frame its body differently")
    } else if minor == 0 {
        Some("an HTTP/1.0 request has `Transfer-Encoding`, which HTTP/1.0 does not have")
    } else {
        None
    }
}

/// The comma-separated tokens of every header named `name`.
fn tokens<'a>(headers: &'a [httparse::Header<'a>], name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .iter()
        .filter(move |h| h.name.eq_ignore_ascii_case(name))
        .filter_map(|h| std::str::from_utf8(h.value).ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// The first value of the header `name`.
fn value<'a>(headers: &'a [httparse::Header<'a>], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .and_then(|h| std::str::from_utf8(h.value).ok())
}

/// Where the line after the start line begins.
fn fields_start(buf: &[u8]) -> usize {
    buf.iter().position(|&b| b == b'\n').map_or(buf.len(), |i| i + 1)
}

/// Where the blank line ending a head of `len` bytes starts.
fn blank_start(buf: &[u8], len: usize) -> usize {
    if buf[..len].ends_with(b"\r\n\r\n") || buf[..len].ends_with(b"\n\r\n") {
        len - 2
    } else {
        len - 1
    }
}

/// Where `part`, a slice of `buf`, is in it.
fn span(buf: &[u8], part: &[u8]) -> Range<usize> {
    let start = part.as_ptr() as usize - buf.as_ptr() as usize;
    start..start + part.len()
}

/// The range of the whole header line whose name and value are these
/// slices of `buf`.
pub(crate) fn line_of(buf: &[u8], name: &[u8], value: &[u8]) -> Range<usize> {
    let start = span(buf, name).start;
    let value_end = span(buf, value).end;
    let end = buf[value_end..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(buf.len(), |i| value_end + i + 1);
    start..end
}

/// A chunked body followed byte by byte as it passes, so the proxy knows
/// where it ends and which bytes are data.
#[derive(Debug, Clone, Default)]
pub struct Chunked {
    state: ChunkState,
    /// The chunk size being read, then what is left of the chunk.
    size: u64,
    digits: u8,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    TrailerLine,
    TrailerLf,
    EndLf,
    Done,
}

/// A chunked body that breaks the coding's rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the chunked body is malformed: {0}")]
pub struct ChunkError(&'static str);

impl Chunked {
    /// Follows `input`, handing each run of chunk data to `data`; returns
    /// how many bytes of `input` belong to the body (all of them unless it
    /// ends within).
    ///
    /// Every line must end in CRLF, as hyper and most servers require: a
    /// proxy that took a bare LF would see the body end where the service
    /// behind it waits for more (and the request hangs), or the reverse,
    /// which is how requests are smuggled.
    pub fn scan(&mut self, input: &[u8], mut data: impl FnMut(&[u8])) -> Result<usize, ChunkError> {
        use ChunkState::*;
        let mut at = 0;
        while at < input.len() && self.state != Done {
            if self.state == Data {
                let take = usize::try_from(self.size).unwrap_or(usize::MAX).min(input.len() - at);
                data(&input[at..at + take]);
                at += take;
                self.size -= take as u64;
                if self.size == 0 {
                    self.state = DataCr;
                }
                continue;
            }
            let byte = input[at];
            at += 1;
            self.state = match (self.state, byte) {
                (Size, b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F') => {
                    let digit = (byte as char).to_digit(16).expect("a hex digit") as u64;
                    self.digits += 1;
                    if self.digits > 15 {
                        return Err(ChunkError("a chunk size is too large"));
                    }
                    self.size = self.size * 16 + digit;
                    Size
                }
                (Size, _) if self.digits == 0 => return Err(ChunkError("a chunk size is missing")),
                (Size, b';' | b' ' | b'\t') => Extension,
                (Size | Extension, b'\r') => SizeLf,
                (Size | Extension, b'\n') => return Err(ChunkError("a chunk size line ends in a bare LF")),
                (SizeLf, b'\n') => self.after_size(),
                (Size, _) => return Err(ChunkError("a chunk size is not hexadecimal")),
                (Extension, _) => Extension,
                (SizeLf, _) => return Err(ChunkError("a chunk size line does not end in CRLF")),
                (DataCr, b'\r') => DataLf,
                (DataLf, b'\n') => Size,
                (DataCr, b'\n') => return Err(ChunkError("chunk data ends in a bare LF")),
                (DataCr | DataLf, _) => return Err(ChunkError("chunk data is longer than its size")),
                (TrailerStart, b'\r') => EndLf,
                (EndLf, b'\n') => Done,
                (EndLf, _) => return Err(ChunkError("the last chunk does not end in CRLF")),
                (TrailerLine, b'\r') => TrailerLf,
                (TrailerLf, b'\n') => TrailerStart,
                (TrailerLf, _) => return Err(ChunkError("a trailer line does not end in CRLF")),
                (TrailerStart | TrailerLine, b'\n') => return Err(ChunkError("a trailer line ends in a bare LF")),
                (TrailerStart | TrailerLine, _) => TrailerLine,
                (Data | Done, _) => unreachable!("handled above"),
            };
        }
        Ok(at)
    }

    fn after_size(&mut self) -> ChunkState {
        self.digits = 0;
        if self.size == 0 {
            ChunkState::TrailerStart
        } else {
            ChunkState::Data
        }
    }

    pub fn done(&self) -> bool {
        self.state == ChunkState::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(text: &str) -> RequestHead {
        RequestHead::parse(text.as_bytes()).unwrap().unwrap()
    }

    #[test]
    fn a_request_head_says_where_it_and_its_body_end() {
        let text = "POST /orders?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello";
        let head = request(text);
        assert_eq!(head.len, text.len() - 5);
        assert_eq!(&text[head.fields_at..head.blank_at], "Host: a\r\nContent-Length: 5\r\n");
        assert_eq!(
            (head.method(text.as_bytes()), head.target(text.as_bytes())),
            ("POST", "/orders?x=1")
        );
        assert_eq!((head.body, head.keep_alive), (Framing::Length(5), true));
        assert!(RequestHead::parse(&text.as_bytes()[..20]).unwrap().is_none());
    }

    #[test]
    fn connection_rules_follow_the_version() {
        assert!(!request("GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(request("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keep_alive);
        assert!(!request("GET / HTTP/1.1\r\nConnection: foo, close\r\n\r\n").keep_alive);
        let upgrade = request("GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
        assert_eq!(upgrade.upgrade.as_deref(), Some("websocket"));
        assert_eq!(request("GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n").upgrade, None);
    }

    #[test]
    fn methods_are_known_and_case_sensitive() {
        let parse = |text: &str| RequestHead::parse(text.as_bytes());
        assert!(request("PUT / HTTP/1.1\r\n\r\n").idempotent);
        assert!(!request("POST / HTTP/1.1\r\n\r\n").idempotent);
        let lowercase = parse("get / HTTP/1.1\r\n\r\n").unwrap_err();
        assert!(
            lowercase.to_string().contains("`get` is not an HTTP method"),
            "{lowercase}"
        );
        assert!(lowercase.to_string().contains("`GET`"), "{lowercase}");
        assert!(matches!(
            parse("BREW /pot HTTP/1.1\r\n\r\n"),
            Err(HeadError::UnknownMethod(_))
        ));
    }

    #[test]
    fn bad_lengths_are_refused() {
        let parse = |text: &str| RequestHead::parse(text.as_bytes());
        assert!(matches!(
            parse("GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n"),
            Err(HeadError::Length(_))
        ));
        assert!(matches!(
            parse("GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            Err(HeadError::Length(_))
        ));
        assert!(matches!(
            parse("GET / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"),
            Err(HeadError::Length(_))
        ));
        assert!(matches!(
            parse("GET / HTTP/1.1\r\nBad Header\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
        for smuggled in [
            "POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\ncontent-length: 119\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert!(request(smuggled).ambiguous.is_some(), "{smuggled}");
        }
        assert_eq!(
            request("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").ambiguous,
            None
        );
    }

    #[test]
    fn the_replay_line_and_traceparent_are_found() {
        let text = "GET / HTTP/1.1\r\nx-devmesh-replay: 42\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n";
        let head = request(text);
        assert_eq!(&text[head.replay.clone().unwrap()], "42");
        let lines: Vec<&str> = head.owned.lines(|_| true).map(|line| &text[line]).collect();
        assert_eq!(lines[0], "x-devmesh-replay: 42\r\n");
        assert!(lines[1].starts_with("traceparent: 00-4bf9"));
        assert_eq!(head.traceparent.unwrap().span_id.0, 0x00f0_67aa_0ba9_02b7);
    }

    #[test]
    fn every_line_devmesh_owns_goes_however_often_and_however_written() {
        // Found by fuzzing: a second `Host`, or a `traceparent` that is no
        // valid one, went on beside the front port's own.
        let text = "GET / HTTP/1.1\r\nHost: a\r\ntraceparent: junk\r\nHOST: b\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\naccept: */*\r\n\r\n";
        let head = request(text);
        assert!(head.traceparent.is_none(), "the first is the one read");
        let hosts: Vec<&str> = head.owned.lines(|o| o == Owned::Host).map(|line| &text[line]).collect();
        assert_eq!(hosts, ["Host: a\r\n", "HOST: b\r\n"]);
        assert_eq!(head.owned.lines(|_| true).count(), 4);
    }

    #[test]
    fn a_request_leaves_room_for_the_lines_a_front_port_adds() {
        let lines = |n: usize| (0..n).map(|i| format!("x-{i}: v\r\n")).collect::<String>();
        let room = MAX_HEADERS - Owned::ALL.len();
        assert!(RequestHead::parse(format!("GET / HTTP/1.1\r\n{}\r\n", lines(room)).as_bytes()).is_ok());
        assert_eq!(
            RequestHead::parse(format!("GET / HTTP/1.1\r\n{}\r\n", lines(room + 1)).as_bytes()).unwrap_err(),
            HeadError::TooManyHeaders
        );
    }

    #[test]
    fn a_response_body_depends_on_status_and_request() {
        let get = request("GET / HTTP/1.1\r\n\r\n");
        let head = request("HEAD / HTTP/1.1\r\n\r\n");
        let response = |text: &str, to: &RequestHead| ResponseHead::parse(text.as_bytes(), to).unwrap().unwrap();
        let ok = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        assert_eq!(response(ok, &get).body, Framing::Length(2));
        assert_eq!(response(ok, &head).body, Framing::Length(0));
        assert_eq!(
            response("HTTP/1.1 204 No Content\r\n\r\n", &get).body,
            Framing::Length(0)
        );
        let until_close = response("HTTP/1.1 200 OK\r\n\r\n", &get);
        assert_eq!((until_close.body, until_close.keep_alive), (Framing::UntilClose, false));
        let chunked = response("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", &get);
        assert_eq!(chunked.body, Framing::Chunked);
        let both = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        let two_ways = response(both, &get);
        assert_eq!(two_ways.body, Framing::Chunked);
        assert_eq!(
            two_ways
                .stale_length
                .iter()
                .map(|l| &both[l.clone()])
                .collect::<Vec<_>>(),
            ["Content-Length: 3\r\n"]
        );
        assert!(response("HTTP/1.1 100 Continue\r\n\r\n", &get).is_interim());
        assert!(!response("HTTP/1.1 101 Switching Protocols\r\n\r\n", &get).is_interim());
    }

    #[test]
    fn a_chunked_body_is_followed_in_pieces() {
        let body = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nTrailer: x\r\n\r\nNEXT";
        for split in 0..body.len() {
            let mut chunked = Chunked::default();
            let mut data = Vec::new();
            let first = chunked.scan(&body[..split], |d| data.extend_from_slice(d)).unwrap();
            assert_eq!(first, split.min(body.len() - 4));
            let rest = chunked.scan(&body[first..], |d| data.extend_from_slice(d)).unwrap();
            assert!(chunked.done(), "split at {split}");
            assert_eq!(first + rest, body.len() - 4, "split at {split}");
            assert_eq!(data, b"hello world");
        }
    }

    #[test]
    fn a_broken_chunked_body_is_an_error() {
        let bare_lf = [
            &b"5\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhello\n",
            b"0\r\n\n",
            b"0\r\nA: b\n",
        ];
        for bad in [&b"x\r\n"[..], b"5\r\nhelloX", b"\r\n", b"0\r\n\rX"]
            .into_iter()
            .chain(bare_lf)
        {
            let scanned = Chunked::default().scan(bad, |_| ());
            assert!(scanned.is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
