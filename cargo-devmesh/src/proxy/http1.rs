//! HTTP/1 forwarding: each client connection gets a connection of its own
//! to the instance, kept from request to request as a reverse proxy's
//! keep-alive upstream is, and replaced when a restart moves the service.
//!
//! Messages pass as the bytes they came as: the proxy parses heads to find
//! where each message ends, adds a `traceparent` when a request has none,
//! and keeps a copy of what it captures. A request and its response each
//! take one read and one write when they fit in a buffer, as through nginx.

use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use hyper::StatusCode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::capture::{self, Capture};
use super::message::{ChunkError, Chunked, Framing, HeadError, RequestHead, ResponseHead};
use super::{Connection, Context};
use crate::inspector::trace::Trace;
use crate::inspector::{EXCHANGE_HEADER, Headers, Seen};

/// Read buffers start this large, which holds most whole exchanges.
const BUFFER: usize = 16 * 1024;
/// A head larger than this is refused (431), as most servers do.
const MAX_HEAD: usize = 64 * 1024;

/// Serves one client connection whose first bytes looked like HTTP/1.
pub async fn serve(mut client: TcpStream, context: &Context, connection: &Connection) {
    let mut link = Link {
        inbound: Buffer::new(),
        upstream: None,
        scratch: Vec::with_capacity(1024),
        response_scratch: Vec::with_capacity(1024),
    };
    serve_requests(&mut client, &mut link, context, connection).await;
    if let Some(upstream) = link.upstream.take() {
        context.pool.give(upstream);
    }
}

/// Connections to instances that outlived the client connection they
/// served, for the next client connection to take, as a reverse proxy's
/// keep-alive pool does: a new client does not wait for a new connection,
/// and the instance is not handed a burst of them. One per front port and
/// proxy thread, as sockets belong to the thread that polls them.
#[derive(Debug, Default)]
pub struct Pool(std::sync::Mutex<Vec<Upstream>>);

/// Connections a pool keeps at most.
const POOL: usize = 64;

impl Pool {
    /// A kept connection to `addr`; those to other instances (replaced
    /// since) and closed ones are dropped on the way.
    fn take(&self, addr: SocketAddr) -> Option<Upstream> {
        let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(upstream) = kept.pop() {
            if upstream.addr == addr && upstream.is_usable() {
                return Some(upstream);
            }
        }
        None
    }

    fn give(&self, upstream: Upstream) {
        let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if kept.len() < POOL && upstream.is_usable() {
            kept.push(upstream);
        }
    }
}

async fn serve_requests(client: &mut TcpStream, link: &mut Link, context: &Context, connection: &Connection) {
    loop {
        let request = match read_head(&mut link.inbound, client, RequestHead::parse).await {
            Ok(Some(request)) => request,
            Ok(None) => return,
            Err(ReadError::Io(_)) => return,
            Err(ReadError::Head(e)) => {
                let status = match e {
                    HeadError::TooManyHeaders => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    _ => StatusCode::BAD_REQUEST,
                };
                let message = format!("devmesh: {e} (front port of `{}`)\n", context.service);
                let _ = client.write_all(&local_response(status, &message)).await;
                return;
            }
            Err(ReadError::TooLarge) => {
                let message = format!(
                    "devmesh: the request head is larger than {MAX_HEAD} bytes (front port of `{}`)\n",
                    context.service
                );
                let response = local_response(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, &message);
                let _ = client.write_all(&response).await;
                return;
            }
        };
        if exchange(client, link, request, context, connection).await == Next::Close {
            return;
        }
    }
}

/// What a client connection holds between requests.
struct Link {
    /// What the client sent and the proxy has not forwarded yet.
    inbound: Buffer,
    /// The kept connection to the instance.
    upstream: Option<Upstream>,
    /// The request head as forwarded, then the first of its body.
    scratch: Vec<u8>,
    /// The response head as forwarded, then the first of its body.
    response_scratch: Vec<u8>,
}

#[derive(Debug)]
struct Upstream {
    addr: SocketAddr,
    stream: TcpStream,
    buffer: Buffer,
}

impl Upstream {
    async fn connect(addr: SocketAddr) -> io::Result<Upstream> {
        let stream = TcpStream::connect(addr).await?;
        let _ = stream.set_nodelay(true);
        Ok(Upstream {
            addr,
            stream,
            buffer: Buffer::new(),
        })
    }

    /// Whether the kept connection can carry a request: the instance has
    /// not closed it and sent nothing unasked. Readiness is known from the
    /// last poll, so this costs no system call.
    fn is_usable(&self) -> bool {
        self.buffer.filled().is_empty()
            && matches!(self.stream.try_read(&mut [0u8; 1]), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Next {
    Another,
    Close,
}

/// Forwards one request and its response.
async fn exchange(
    client: &mut TcpStream,
    link: &mut Link,
    request: RequestHead,
    context: &Context,
    connection: &Connection,
) -> Next {
    let arrived = Instant::now();
    let ready = context.ready_backend().await;
    let waited = arrived.elapsed();

    let caller = match context.capturing() {
        true => Some(connection.caller(&context.inspector).await),
        false => None,
    };
    let trace = caller.as_ref().map(|caller| {
        context
            .inspector
            .store
            .enter(&context.service, caller, request.traceparent)
    });
    write_request_head(
        &mut link.scratch,
        &link.inbound.filled()[..request.len],
        &request,
        trace,
    );
    // Capture begins once the head is on its way: its bookkeeping overlaps
    // the service's own time.
    let begin = |head: &[u8]| {
        let (trace, caller) = (trace?, caller.clone()?);
        let captured = capture::Request {
            method: &request.method,
            target: &request.target,
            version: if request.minor == 0 { "HTTP/1.0" } else { "HTTP/1.1" },
            headers: Headers::from_lines(&head[request.fields_at..head.len() - 2]),
            waited,
            replay_of: request.replay_of.as_ref().map(|(id, _)| *id),
            trace,
        };
        Some(Capture::begin(context, caller, captured, arrived))
    };
    link.inbound.consume(request.len);

    let (backend, _lease) = match ready {
        Ok(ready) => ready,
        Err(message) => {
            let capture = begin(&link.scratch);
            answer(client, StatusCode::SERVICE_UNAVAILABLE, &message, capture).await;
            return Next::Close;
        }
    };
    // A kept connection may have been closed under a request that was
    // already written; one without a body is sent again on a new one.
    let mut kept = link
        .upstream
        .take()
        .filter(|u| u.addr == backend.addr && u.is_usable())
        .or_else(|| context.pool.take(backend.addr));
    let limit = context.inspector.store.config.max_body;
    let mut request_seen = Seen::default();
    let mut response_seen = Seen::default();
    let mut capture = None;
    loop {
        let reused = kept.is_some();
        let mut upstream = match kept.take() {
            Some(upstream) => upstream,
            None => match Upstream::connect(backend.addr).await {
                Ok(upstream) => upstream,
                Err(e) => {
                    let message = did_not_answer(context, backend.addr, &e.to_string());
                    let capture = capture.or_else(|| begin(&link.scratch));
                    answer(client, StatusCode::BAD_GATEWAY, &message, capture).await;
                    return Next::Close;
                }
            },
        };
        let outcome = forward(
            client,
            link,
            &mut upstream,
            &request,
            limit,
            Seens {
                request: &mut request_seen,
                response: &mut response_seen,
            },
            Capturing {
                capture: &mut capture,
                begin: &begin,
                forwarded: Instant::now(),
            },
        )
        .await;
        let response = match outcome {
            Ok(response) => response,
            // The head is still in `link.scratch` (see `Relay::body`).
            Err(Failure::NoResponse(_)) if reused && request.body == Framing::Length(0) => continue,
            Err(Failure::NoResponse(e) | Failure::Service(e)) => {
                let message = did_not_answer(context, backend.addr, &e);
                let capture = capture.or_else(|| begin(&link.scratch));
                answer(client, StatusCode::BAD_GATEWAY, &message, capture).await;
                return Next::Close;
            }
            Err(Failure::Broken(e)) => {
                if let Some(capture) = capture.or_else(|| begin(&link.scratch)) {
                    capture.end(Some(request_seen), Some(response_seen), Some(e));
                }
                return Next::Close;
            }
        };
        if response.upgraded() {
            let upgrade = request.upgrade.as_deref().unwrap_or("tunnel");
            if let Some(capture) = &mut capture {
                capture.upgraded(upgrade);
                capture.publish();
            }
            let piped = pipe_upgraded(client, &mut link.inbound, &mut upstream).await;
            if let Some(capture) = capture {
                let (up, down, error) = match piped {
                    Ok((up, down)) => (up, down, None),
                    Err(e) => (0, 0, Some(e.to_string())),
                };
                capture.end_stream(up, down, error);
            }
            return Next::Close;
        }
        if let Some(capture) = capture {
            capture.end(Some(request_seen), Some(response_seen), None);
        }
        let again = request.keep_alive && response.head.keep_alive && response.request_sent;
        if again {
            link.upstream = Some(upstream);
            return Next::Another;
        }
        return Next::Close;
    }
}

/// Writes the head the service sees into `out`: as it came, less the
/// replay line, plus a `traceparent` when the request had none.
fn write_request_head(out: &mut Vec<u8>, head: &[u8], request: &RequestHead, trace: Option<Trace>) {
    out.clear();
    match &request.replay_of {
        Some((_, line)) => {
            out.extend_from_slice(&head[..line.start]);
            out.extend_from_slice(&head[line.end..request.blank_at]);
        }
        None => out.extend_from_slice(&head[..request.blank_at]),
    }
    if let Some(trace) = trace.filter(|t| t.added) {
        out.extend_from_slice(b"traceparent: ");
        out.extend_from_slice(&trace.header.header());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// The bodies' captures of one exchange.
struct Seens<'a> {
    request: &'a mut Seen,
    response: &'a mut Seen,
}

/// How forwarding went wrong.
#[derive(Debug)]
enum Failure {
    /// The instance closed or failed before any of its response came.
    NoResponse(String),
    /// The instance sent a broken response head: the client can be told.
    Service(String),
    /// Either side broke off once the response had started, or the client
    /// sent a broken body: the connection ends.
    Broken(String),
}

/// The final response to a forwarded request.
struct Forwarded {
    head: ResponseHead,
    /// Whether all of the request body went out (an instance may answer
    /// before reading it, and the client may then stop sending it).
    request_sent: bool,
}

impl Forwarded {
    fn upgraded(&self) -> bool {
        self.head.status == 101
    }
}

/// Where an exchange's capture is: begun by `forward` once the head is on
/// its way (or before, for a request with a body).
struct Capturing<'a> {
    capture: &'a mut Option<Capture>,
    /// Begins capture given the head as forwarded; `None` when capture is off.
    begin: &'a (dyn Fn(&[u8]) -> Option<Capture> + Sync),
    /// When the request went to the instance.
    forwarded: Instant,
}

/// Sends the request in `link.scratch` (its head) and its body, and relays
/// the response, at once: an instance may answer before it reads the body.
async fn forward(
    client: &mut TcpStream,
    link: &mut Link,
    upstream: &mut Upstream,
    request: &RequestHead,
    limit: usize,
    seens: Seens<'_>,
    capturing: Capturing<'_>,
) -> Result<Forwarded, Failure> {
    let Capturing {
        capture,
        begin,
        forwarded,
    } = capturing;
    let (mut client_read, mut client_write) = client.split();
    let (mut upstream_read, mut upstream_write) = upstream.stream.split();
    let response_relay = Relay {
        buffer: &mut upstream.buffer,
        from: &mut upstream_read,
        to: &mut client_write,
        limit,
    };
    if request.body == Framing::Length(0) {
        // Only the head goes out; it fits in the socket's buffer.
        upstream_write
            .write_all(&link.scratch)
            .await
            .map_err(|e| Failure::NoResponse(e.to_string()))?;
        seens.request.finished = true;
        if capture.is_none() {
            *capture = begin(&link.scratch);
        }
        let receiving = capture.as_mut().map(|c| (c, forwarded));
        let head = receive(
            response_relay,
            &mut link.response_scratch,
            request,
            seens.response,
            receiving,
        )
        .await?;
        return Ok(Forwarded {
            head,
            request_sent: true,
        });
    }
    if capture.is_none() {
        *capture = begin(&link.scratch);
    }
    let to_service = Relay {
        buffer: &mut link.inbound,
        from: &mut client_read,
        to: &mut upstream_write,
        limit,
    };
    let mut send = std::pin::pin!(to_service.body(&mut link.scratch, request.body, seens.request));
    let receiving = capture.as_mut().map(|c| (c, forwarded));
    let mut receive = std::pin::pin!(receive(
        response_relay,
        &mut link.response_scratch,
        request,
        seens.response,
        receiving
    ));
    let mut request_sent = false;
    loop {
        tokio::select! {
            sent = &mut send, if !request_sent => {
                sent.map_err(|e| match e {
                    Broken::Sink(e) => Failure::NoResponse(e.to_string()),
                    e => Failure::Broken(format!("the request body: {e}")),
                })?;
                request_sent = true;
            }
            head = &mut receive => return Ok(Forwarded { head: head?, request_sent }),
        }
    }
}

/// Reads the response to `request`, passing interim ones (`100 Continue`)
/// on, and relays the final one; returns its head.
async fn receive<R, W>(
    relay: Relay<'_, R, W>,
    scratch: &mut Vec<u8>,
    request: &RequestHead,
    seen: &mut Seen,
    mut capture: Option<(&mut Capture, Instant)>,
) -> Result<ResponseHead, Failure>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut answered = false;
    let head = loop {
        let head = match read_head(relay.buffer, relay.from, |buf| ResponseHead::parse(buf, request)).await {
            Ok(Some(head)) => head,
            Ok(None) if !answered => return Err(Failure::NoResponse("it closed the connection".to_owned())),
            Ok(None) => return Err(Failure::Broken("the service closed the connection".to_owned())),
            Err(ReadError::Io(e)) if !answered => return Err(Failure::NoResponse(e.to_string())),
            Err(e) => return Err(Failure::Service(format!("its response: {e}"))),
        };
        if !head.is_interim() {
            break head;
        }
        relay
            .to
            .write_all(&relay.buffer.filled()[..head.len])
            .await
            .map_err(|e| Failure::Broken(format!("the client: {e}")))?;
        relay.buffer.consume(head.len);
        answered = true;
    };
    let filled = relay.buffer.filled();
    scratch.clear();
    let replay_id = capture.as_ref().and_then(|(c, _)| c.replay_id());
    match replay_id {
        Some(id) => {
            scratch.extend_from_slice(&filled[..head.blank_at]);
            scratch.extend_from_slice(format!("{EXCHANGE_HEADER}: {id}\r\n").as_bytes());
            scratch.extend_from_slice(&filled[head.blank_at..head.len]);
        }
        None => scratch.extend_from_slice(&filled[..head.len]),
    }
    if let Some((capture, forwarded)) = &mut capture {
        let lines = Headers::from_lines(&scratch[head.fields_at..scratch.len() - (head.len - head.blank_at)]);
        capture.respond(head.status, lines, Some(forwarded.elapsed()));
        let whole = matches!(head.body, Framing::Length(n) if (filled.len() - head.len) as u64 >= n);
        if !whole {
            capture.publish();
        }
    }
    relay.buffer.consume(head.len);
    relay.body(scratch, head.body, seen).await.map_err(|e| match e {
        Broken::Sink(e) => Failure::Broken(format!("the client: {e}")),
        e => Failure::Broken(format!("the response body: {e}")),
    })?;
    Ok(head)
}

/// One direction of an exchange: bytes read `from` one side into `buffer`
/// and written `to` the other.
struct Relay<'a, R, W> {
    buffer: &'a mut Buffer,
    from: &'a mut R,
    to: &'a mut W,
    /// Bytes of a body kept for the inspector.
    limit: usize,
}

/// Why a body did not pass whole.
#[derive(Debug, thiserror::Error)]
enum Broken {
    #[error("reading it failed: {0}")]
    Source(io::Error),
    #[error("it ended early")]
    Ended,
    #[error("writing it failed: {0}")]
    Sink(io::Error),
    #[error(transparent)]
    Framing(#[from] ChunkError),
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Relay<'_, R, W> {
    /// Writes `head`, then the body of `framing` that follows it, the first
    /// of it in the same write; records the body's data in `seen`.
    async fn body(self, head: &mut Vec<u8>, framing: Framing, seen: &mut Seen) -> Result<(), Broken> {
        let mut rest = Rest::from(framing);
        let mut pending = Some(head);
        loop {
            let taken = rest.take(self.buffer.filled(), seen, self.limit)?;
            let bytes = &self.buffer.filled()[..taken];
            match pending.take() {
                Some(head) => {
                    let written = head.len();
                    head.extend_from_slice(bytes);
                    let sent = self.to.write_all(head).await;
                    // The head stays for a second try on a new connection.
                    head.truncate(written);
                    sent.map_err(Broken::Sink)?;
                }
                None if taken > 0 => self.to.write_all(bytes).await.map_err(Broken::Sink)?,
                None => {}
            }
            self.buffer.consume(taken);
            if rest.done() {
                seen.finished = true;
                return Ok(());
            }
            match self.buffer.fill(self.from).await {
                Ok(0) if matches!(rest, Rest::UntilClose) => {
                    seen.finished = true;
                    return Ok(());
                }
                Ok(0) => return Err(Broken::Ended),
                Ok(_) => {}
                Err(e) => return Err(Broken::Source(e)),
            }
        }
    }
}

/// What is left of a body.
#[derive(Debug)]
enum Rest {
    Length(u64),
    Chunked(Chunked),
    UntilClose,
}

impl From<Framing> for Rest {
    fn from(framing: Framing) -> Rest {
        match framing {
            Framing::Length(n) => Rest::Length(n),
            Framing::Chunked => Rest::Chunked(Chunked::default()),
            Framing::UntilClose => Rest::UntilClose,
        }
    }
}

impl Rest {
    /// How much of `input` is body, recording its data.
    fn take(&mut self, input: &[u8], seen: &mut Seen, limit: usize) -> Result<usize, ChunkError> {
        match self {
            Rest::Length(left) => {
                let n = usize::try_from(*left).unwrap_or(usize::MAX).min(input.len());
                seen.record(&input[..n], limit);
                *left -= n as u64;
                Ok(n)
            }
            Rest::Chunked(chunked) => chunked.scan(input, |data| seen.record(data, limit)),
            Rest::UntilClose => {
                seen.record(input, limit);
                Ok(input.len())
            }
        }
    }

    fn done(&self) -> bool {
        match self {
            Rest::Length(left) => *left == 0,
            Rest::Chunked(chunked) => chunked.done(),
            Rest::UntilClose => false,
        }
    }
}

/// Once a `101 Switching Protocols` has passed, the connection is the
/// client's and the instance's: bytes go both ways until either closes.
async fn pipe_upgraded(
    client: &mut TcpStream,
    inbound: &mut Buffer,
    upstream: &mut Upstream,
) -> io::Result<(u64, u64)> {
    let early_up = inbound.filled().len() as u64;
    upstream.stream.write_all(inbound.filled()).await?;
    inbound.consume(inbound.filled().len());
    let early_down = upstream.buffer.filled().len() as u64;
    client.write_all(upstream.buffer.filled()).await?;
    let (up, down) = tokio::io::copy_bidirectional(client, &mut upstream.stream).await?;
    Ok((early_up + up, early_down + down))
}

/// Answers the client from the proxy itself, and records that answer.
async fn answer(client: &mut TcpStream, status: StatusCode, message: &str, capture: Option<Capture>) {
    let response = local_response(status, message);
    let _ = client.write_all(&response).await;
    if let Some(mut capture) = capture {
        let head_end = response.len() - message.len();
        let fields_at = response.iter().position(|&b| b == b'\n').map_or(0, |i| i + 1);
        capture.respond(
            status.as_u16(),
            Headers::from_lines(&response[fields_at..head_end - 2]),
            None,
        );
        let mut seen = Seen {
            finished: true,
            ..Seen::default()
        };
        seen.record(message.as_bytes(), message.len());
        capture.end(None, Some(seen), None);
    }
}

/// A whole response from the proxy, after which the connection closes.
fn local_response(status: StatusCode, message: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {} {}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{message}",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        message.len()
    )
    .into_bytes()
}

fn did_not_answer(context: &Context, addr: SocketAddr, error: &str) -> String {
    format!(
        "devmesh: service `{}` at {addr} did not answer: {error} (hint: `cargo devmesh logs {}`)\n",
        context.service, context.service
    )
}

#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error(transparent)]
    Io(io::Error),
    #[error(transparent)]
    Head(HeadError),
    #[error("the head is larger than {MAX_HEAD} bytes")]
    TooLarge,
}

/// Reads until `buffer` starts with a whole head; `None` when the peer
/// closed before sending a byte of one.
async fn read_head<T>(
    buffer: &mut Buffer,
    from: &mut (impl AsyncRead + Unpin),
    parse: impl Fn(&[u8]) -> Result<Option<T>, HeadError>,
) -> Result<Option<T>, ReadError> {
    loop {
        if !buffer.filled().is_empty()
            && let Some(head) = parse(buffer.filled()).map_err(ReadError::Head)?
        {
            return Ok(Some(head));
        }
        if buffer.filled().len() >= MAX_HEAD {
            return Err(ReadError::TooLarge);
        }
        match buffer.fill(from).await.map_err(ReadError::Io)? {
            0 if buffer.filled().is_empty() => return Ok(None),
            0 => {
                return Err(ReadError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the connection closed mid-head",
                )));
            }
            _ => {}
        }
    }
}

/// Bytes read from a socket and not used yet.
#[derive(Debug)]
struct Buffer {
    bytes: Vec<u8>,
    start: usize,
    end: usize,
}

impl Buffer {
    fn new() -> Buffer {
        Buffer {
            bytes: vec![0; BUFFER],
            start: 0,
            end: 0,
        }
    }

    fn filled(&self) -> &[u8] {
        &self.bytes[self.start..self.end]
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        debug_assert!(self.start <= self.end);
    }

    /// Reads what is there into the free end, making room first.
    async fn fill(&mut self, from: &mut (impl AsyncRead + Unpin)) -> io::Result<usize> {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        } else if self.end == self.bytes.len() {
            if self.start > 0 {
                self.bytes.copy_within(self.start..self.end, 0);
                (self.start, self.end) = (0, self.end - self.start);
            } else {
                // A head longer than the buffer: room up to `MAX_HEAD`
                // (`read_head` stops there).
                self.bytes.resize((self.bytes.len() * 2).min(MAX_HEAD), 0);
            }
        }
        let n = from.read(&mut self.bytes[self.end..]).await?;
        self.end += n;
        Ok(n)
    }
}
