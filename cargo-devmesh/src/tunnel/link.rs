//! One TCP connection between a supervisor and the relay, carrying every
//! tunneled connection as a stream of its own. Each stream has a window
//! of credit in each direction: a sender sends no more than the receiver
//! has room for, and the receiver gives credit back as it writes the bytes
//! on, so one slow connection never stalls the others. Heartbeats find a
//! link that went silent.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::{CancellationToken, PollSemaphore, PollSender};

use super::wire::{Frame, Kind, MAX_PAYLOAD};

/// Bytes a stream may have on their way, each direction.
pub const WINDOW: u32 = 256 * 1024;
/// Bytes a link asks for in one read.
const READ_SIZE: usize = 64 * 1024;
/// How often a link says it is alive.
const PING_EVERY: Duration = Duration::from_secs(10);
/// How long a link may be silent before it is taken for dead.
const SILENT_FOR: Duration = Duration::from_secs(30);

/// What a link or a stream runs over: TCP, or TLS over TCP.
pub trait Socket: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Socket for T {}

/// Which end of a link this is: the ids of the streams it opens start
/// there, and go up by two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Side {
    Relay = 1,
    Supervisor = 2,
}

/// A link; cheap to clone.
#[derive(Debug, Clone)]
pub struct Link {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    out: mpsc::Sender<Frame>,
    /// Credit given back, sent before what waits in `out`: never held up
    /// behind data (and a reader gives it back without waiting).
    credit_back: mpsc::UnboundedSender<Frame>,
    streams: std::sync::Mutex<HashMap<u32, Ends>>,
    next: AtomicU32,
    alive: CancellationToken,
}

/// The link's side of one stream.
#[derive(Debug)]
struct Ends {
    /// Bytes that came for it; dropped when the peer closed its side.
    data: Option<mpsc::UnboundedSender<Vec<u8>>>,
    /// Credit to send.
    credit: Arc<Semaphore>,
    /// Bytes that came and were not given back as credit yet: a peer
    /// that sends past its window breaks the protocol (what it sent would
    /// otherwise be held without bound).
    unacknowledged: u32,
}

/// A stream's end, to pipe a connection over.
#[derive(Debug)]
pub struct Stream {
    pub id: u32,
    data: mpsc::UnboundedReceiver<Vec<u8>>,
    credit: Arc<Semaphore>,
}

impl Link {
    /// Runs a link over `socket`, whose first bytes already read are
    /// `read`. Each stream the peer opens comes to `opened` with the
    /// payload of its `OPEN` (the service it is for, or what to dial).
    /// Both ends open streams: the relay's are odd, the supervisor's
    /// even (`Side`).
    pub fn run<S: Socket>(
        socket: S,
        read: Vec<u8>,
        opened: mpsc::UnboundedSender<(Stream, String)>,
        side: Side,
    ) -> Link {
        let (reader, writer) = tokio::io::split(socket);
        let (out, frames) = mpsc::channel(256);
        let (credit_back, credits) = mpsc::unbounded_channel();
        let link = Link {
            shared: Arc::new(Shared {
                out,
                credit_back,
                streams: std::sync::Mutex::default(),
                next: AtomicU32::new(side as u32),
                alive: CancellationToken::new(),
            }),
        };
        tokio::spawn(write(writer, credits, frames, link.shared.alive.clone()));
        tokio::spawn(link.clone().read(reader, read, opened));
        let pinger = link.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = pinger.shared.alive.cancelled() => return,
                    () = tokio::time::sleep(PING_EVERY) => pinger.send(Frame::new(Kind::Ping, 0, Vec::new())).await,
                }
            }
        });
        link
    }

    /// Waits until the link is gone.
    pub async fn closed(&self) {
        self.shared.alive.cancelled().await;
    }

    pub fn is_alive(&self) -> bool {
        !self.shared.alive.is_cancelled()
    }

    /// Ends the link.
    pub fn close(&self) {
        self.shared.alive.cancel();
    }

    /// Opens a stream for `what`: a service (the relay, for a public
    /// connection), or `dial <host:port>` (the supervisor, for a service
    /// inside the sandbox).
    pub async fn open(&self, what: &str) -> Stream {
        let id = self.shared.next.fetch_add(2, Ordering::Relaxed);
        let stream = self.register(id);
        self.send(Frame::new(Kind::Open, id, what.as_bytes().to_vec())).await;
        stream
    }

    /// Pipes `socket` over `stream` until both sides are done, or the link
    /// is; `first` goes first, as if read from `socket` (a request head
    /// the relay read to check it).
    pub async fn pipe<S: Socket>(&self, stream: Stream, socket: S, first: Vec<u8>) {
        let Stream { id, mut data, credit } = stream;
        let (mut reader, mut writer) = tokio::io::split(socket);
        let up = async {
            for piece in first.chunks(MAX_PAYLOAD) {
                match credit.acquire_many(piece.len() as u32).await {
                    Ok(permit) => permit.forget(),
                    Err(_) => return,
                }
                self.send(Frame::new(Kind::Data, id, piece.to_vec())).await;
            }
            // Whole frames' worth: a download is carried in the fewest.
            let mut buf = vec![0u8; MAX_PAYLOAD];
            loop {
                let n = match reader.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                match credit.acquire_many(n as u32).await {
                    Ok(permit) => permit.forget(),
                    Err(_) => return,
                }
                self.send(Frame::new(Kind::Data, id, buf[..n].to_vec())).await;
            }
            self.send(Frame::new(Kind::Close, id, Vec::new())).await;
        };
        let down = async {
            // Credit is given back a quarter window at a time, not per
            // piece: a small request and its answer cost no WINDOW frame.
            let mut owed = 0u32;
            while let Some(bytes) = data.recv().await {
                if writer.write_all(&bytes).await.is_err() {
                    break;
                }
                owed += bytes.len() as u32;
                if owed >= WINDOW / 4 {
                    self.give_credit(id, owed);
                    owed = 0;
                }
            }
            let _ = writer.shutdown().await;
        };
        tokio::select! {
            () = self.shared.alive.cancelled() => {}
            _ = async { tokio::join!(up, down) } => {}
        }
        self.lock().remove(&id);
    }

    /// Answers `stream` with `bytes` and closes it (a refusal, in the
    /// words of the protocol the caller speaks).
    pub async fn answer(&self, stream: Stream, bytes: Vec<u8>) {
        for piece in bytes.chunks(MAX_PAYLOAD) {
            self.send(Frame::new(Kind::Data, stream.id, piece.to_vec())).await;
        }
        self.send(Frame::new(Kind::Close, stream.id, Vec::new())).await;
        self.lock().remove(&stream.id);
    }

    /// Serves `stream` in this process, as a connection of its own.
    pub fn carry(&self, stream: Stream) -> Carried {
        let Stream { id, data, credit } = stream;
        Carried {
            reading: Reading {
                id,
                data,
                unread: Vec::new(),
                at: 0,
                owed: 0,
                link: self.clone(),
            },
            writing: Writing {
                id,
                credit: PollSemaphore::new(Arc::clone(&credit)),
                semaphore: credit,
                out: PollSender::new(self.shared.out.clone()),
                shut: false,
                link: self.clone(),
            },
        }
    }

    /// Tells the peer that `bytes` of stream `id` were written on.
    fn give_credit(&self, id: u32, bytes: u32) {
        if let Some(ends) = self.lock().get_mut(&id) {
            ends.unacknowledged = ends.unacknowledged.saturating_sub(bytes);
        }
        let _ = self
            .shared
            .credit_back
            .send(Frame::new(Kind::Window, id, bytes.to_be_bytes().to_vec()));
    }

    fn register(&self, id: u32) -> Stream {
        let (data, receiver) = mpsc::unbounded_channel();
        let credit = Arc::new(Semaphore::new(WINDOW as usize));
        self.lock().insert(
            id,
            Ends {
                data: Some(data),
                credit: Arc::clone(&credit),
                unacknowledged: 0,
            },
        );
        Stream {
            id,
            data: receiver,
            credit,
        }
    }

    async fn send(&self, frame: Frame) {
        if self.shared.out.send(frame).await.is_err() {
            self.close();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Ends>> {
        self.shared.streams.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads frames until the link ends, a peer breaks the protocol, or it
    /// is silent for [`SILENT_FOR`].
    async fn read<S: Socket>(
        self,
        mut reader: ReadHalf<S>,
        mut pending: Vec<u8>,
        opened: mpsc::UnboundedSender<(Stream, String)>,
    ) {
        'link: loop {
            // Every whole frame read, then what is left moved to the front
            // once (not once a frame: a read holds hundreds of small ones).
            let mut decoded = 0;
            loop {
                let (frame, used) = match Frame::decode(&pending[decoded..]) {
                    Ok(Some(frame)) => frame,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!("tunnel: {e}; the link is closed");
                        break 'link;
                    }
                };
                decoded += used;
                if !self.dispatch(frame, &opened).await {
                    break 'link;
                }
            }
            pending.drain(..decoded);
            if pending.len() > 2 * MAX_PAYLOAD + 64 {
                // Never: a frame is decoded as soon as it is whole.
                break;
            }
            // Read into the buffer itself: no copy from a second one.
            pending.reserve(READ_SIZE);
            let read = tokio::select! {
                () = self.shared.alive.cancelled() => break,
                read = tokio::time::timeout(SILENT_FOR, reader.read_buf(&mut pending)) => read,
            };
            if !matches!(read, Ok(Ok(n)) if n > 0) {
                break;
            }
        }
        self.close();
        // Every stream's reader sees its end, and its writer waits for no
        // more credit.
        for ends in self.lock().drain().map(|(_, ends)| ends) {
            ends.credit.close();
        }
    }

    /// Handles one frame; false when it breaks the protocol (said in the
    /// log).
    async fn dispatch(&self, frame: Frame, opened: &mpsc::UnboundedSender<(Stream, String)>) -> bool {
        let stream = frame.stream;
        let broken = |why: &str| {
            tracing::warn!("tunnel: the peer {why} (stream {stream}); the link is closed");
            false
        };
        match frame.kind {
            Kind::Data => {
                let mut streams = self.lock();
                // A stream closed here may still get what was on its way.
                let Some(ends) = streams.get_mut(&frame.stream) else {
                    return true;
                };
                let Some(data) = &ends.data else { return true };
                let sent = ends.unacknowledged.saturating_add(frame.payload.len() as u32);
                if sent > WINDOW {
                    return broken("sent more than its window");
                }
                ends.unacknowledged = sent;
                let _ = data.send(frame.payload);
            }
            Kind::Window => {
                let Ok(credit) = frame.credit() else {
                    return broken("sent a WINDOW frame that is not 4 bytes");
                };
                if let Some(ends) = self.lock().get(&frame.stream) {
                    // Credit comes back for bytes sent, never more: the
                    // window it gives never grows past WINDOW.
                    if ends.credit.available_permits() as u64 + u64::from(credit) > u64::from(WINDOW) {
                        return broken("gave back more credit than was sent");
                    }
                    ends.credit.add_permits(credit as usize);
                }
            }
            Kind::Close => {
                if let Some(ends) = self.lock().get_mut(&frame.stream) {
                    ends.data = None;
                }
            }
            Kind::Open => {
                // The peer's ids are the other parity (`Side`), each new.
                let ours = self.shared.next.load(Ordering::Relaxed) % 2 == frame.stream % 2;
                if ours || frame.stream == 0 || self.lock().contains_key(&frame.stream) {
                    return broken("opened a stream whose id is not its to open, or is open already");
                }
                let stream = self.register(frame.stream);
                let service = String::from_utf8_lossy(&frame.payload).into_owned();
                if opened.send((stream, service)).is_err() {
                    return false;
                }
            }
            Kind::Ping => self.send(Frame::new(Kind::Pong, 0, Vec::new())).await,
            Kind::Pong => {}
            Kind::Hello | Kind::Welcome | Kind::Refused => return broken("sent a handshake frame mid-link"),
        }
        true
    }
}

/// Writes frames as they come, several to a write when several wait;
/// credit given back first.
async fn write<S: Socket>(
    mut writer: WriteHalf<S>,
    mut credits: mpsc::UnboundedReceiver<Frame>,
    mut frames: mpsc::Receiver<Frame>,
    alive: CancellationToken,
) {
    let mut bytes = Vec::with_capacity(64 * 1024);
    loop {
        let frame = tokio::select! {
            biased;
            () = alive.cancelled() => break,
            Some(frame) = credits.recv() => frame,
            frame = frames.recv() => match frame { Some(frame) => frame, None => break },
        };
        bytes.clear();
        frame.encode(&mut bytes);
        while let Ok(frame) = credits.try_recv() {
            frame.encode(&mut bytes);
        }
        while bytes.len() < 256 * 1024
            && let Ok(frame) = frames.try_recv()
        {
            frame.encode(&mut bytes);
        }
        if writer.write_all(&bytes).await.is_err() {
            break;
        }
    }
    alive.cancel();
}

/// A stream the supervisor serves itself: read and written like a socket.
/// Dropped, it is closed.
#[derive(Debug)]
pub struct Carried {
    reading: Reading,
    writing: Writing,
}

/// What comes in on a carried stream.
#[derive(Debug)]
pub struct Reading {
    id: u32,
    data: mpsc::UnboundedReceiver<Vec<u8>>,
    /// The piece being read, from `at`.
    unread: Vec<u8>,
    at: usize,
    /// Bytes read and not yet given back as credit.
    owed: u32,
    link: Link,
}

/// What goes out on a carried stream.
#[derive(Debug)]
pub struct Writing {
    id: u32,
    credit: PollSemaphore,
    semaphore: Arc<Semaphore>,
    out: PollSender<Frame>,
    /// Whether its `CLOSE` went.
    shut: bool,
    link: Link,
}

impl Reading {
    /// Waits for a piece to read; false once the peer closed.
    fn poll_piece(&mut self, cx: &mut std::task::Context<'_>) -> Poll<bool> {
        while self.at == self.unread.len() {
            match ready!(self.data.poll_recv(cx)) {
                Some(piece) => (self.unread, self.at) = (piece, 0),
                None => return Poll::Ready(false),
            }
        }
        Poll::Ready(true)
    }
}

impl AsyncRead for Reading {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !ready!(self.poll_piece(cx)) {
            return Poll::Ready(Ok(()));
        }
        let n = buf.remaining().min(self.unread.len() - self.at);
        buf.put_slice(&self.unread[self.at..self.at + n]);
        self.at += n;
        // Credit goes back a quarter window at a time, as in `Link::pipe`.
        self.owed += n as u32;
        if self.owed >= WINDOW / 4 {
            self.link.give_credit(self.id, self.owed);
            self.owed = 0;
        }
        Poll::Ready(Ok(()))
    }
}

impl crate::proxy::Peek for Reading {
    fn poll_peek(&mut self, cx: &mut std::task::Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<usize>> {
        if !ready!(self.poll_piece(cx)) {
            return Poll::Ready(Ok(0));
        }
        let n = buf.remaining().min(self.unread.len() - self.at);
        buf.put_slice(&self.unread[self.at..self.at + n]);
        Poll::Ready(Ok(n))
    }
}

fn link_gone() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the link to the relay is gone")
}

impl AsyncWrite for Writing {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        // A place in the link's queue first, held while credit comes.
        ready!(self.out.poll_reserve(cx)).map_err(|_| link_gone())?;
        let want = buf.len().min(MAX_PAYLOAD);
        let available = self.semaphore.available_permits();
        let n = if available > 0 {
            want.min(available)
        } else {
            match ready!(self.credit.poll_acquire(cx)) {
                Some(permit) => permit.forget(),
                None => return Poll::Ready(Err(link_gone())),
            }
            1 + (want - 1).min(self.semaphore.available_permits())
        };
        let taken = n - usize::from(available == 0);
        if taken > 0 {
            match self.semaphore.try_acquire_many(taken as u32) {
                Ok(permit) => permit.forget(),
                Err(_) => return Poll::Ready(Err(link_gone())),
            }
        }
        let frame = Frame::new(Kind::Data, self.id, buf[..n].to_vec());
        self.out.send_item(frame).map_err(|_| link_gone())?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<std::io::Result<()>> {
        if !self.shut {
            ready!(self.out.poll_reserve(cx)).map_err(|_| link_gone())?;
            let frame = Frame::new(Kind::Close, self.id, Vec::new());
            self.out.send_item(frame).map_err(|_| link_gone())?;
            self.shut = true;
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for Writing {
    fn drop(&mut self) {
        self.link.lock().remove(&self.id);
        if self.shut || !self.link.is_alive() {
            return;
        }
        // After what it wrote, which is queued already.
        let close = Frame::new(Kind::Close, self.id, Vec::new());
        if let Err(mpsc::error::TrySendError::Full(close)) = self.link.shared.out.try_send(close) {
            let link = self.link.clone();
            tokio::spawn(async move { link.send(close).await });
        }
    }
}

impl AsyncRead for Carried {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.reading).poll_read(cx, buf)
    }
}

impl AsyncWrite for Carried {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.writing).poll_write(cx, buf)
    }

    fn poll_flush(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.writing).poll_flush(cx)
    }

    fn poll_shutdown(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.writing).poll_shutdown(cx)
    }
}

impl crate::proxy::Peek for Carried {
    fn poll_peek(&mut self, cx: &mut std::task::Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<usize>> {
        self.reading.poll_peek(cx, buf)
    }
}

impl crate::proxy::ClientIo for Carried {
    type Reader<'a> = &'a mut Reading;
    type Writer<'a> = &'a mut Writing;

    fn split(&mut self) -> (&mut Reading, &mut Writing) {
        (&mut self.reading, &mut self.writing)
    }

    /// A stream has no reset: it is closed when dropped.
    fn reset_on_close(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::{TcpListener, TcpStream};

    /// A relay's link and a supervisor's over loopback, and the streams
    /// the relay opens, as the supervisor hears of them.
    async fn linked() -> (Link, Link, mpsc::UnboundedReceiver<(Stream, String)>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move { TcpStream::connect(addr).await.unwrap() });
        let (server_side, _) = listener.accept().await.unwrap();
        let (opened_tx, opened) = mpsc::unbounded_channel();
        let relay = Link::run(server_side, Vec::new(), mpsc::unbounded_channel().0, Side::Relay);
        let supervisor = Link::run(client.await.unwrap(), Vec::new(), opened_tx, Side::Supervisor);
        (relay, supervisor, opened)
    }

    /// Sends `sent` to `caller` and closes its side, reading what comes
    /// back at once; fails if it does not come back whole, in order.
    async fn echoes(caller: impl AsyncRead + AsyncWrite, sent: &[u8]) {
        let (mut r, mut w) = tokio::io::split(caller);
        let echoed = async {
            tokio::join!(
                async {
                    w.write_all(sent).await.unwrap();
                    w.shutdown().await.unwrap();
                },
                async {
                    let mut got = Vec::new();
                    r.read_to_end(&mut got).await.unwrap();
                    got
                }
            )
        };
        let ((), received) = tokio::time::timeout(Duration::from_secs(20), echoed)
            .await
            .expect("echoed in time (credit given back)");
        assert!(
            received == sent,
            "{} bytes of {} came back in order",
            received.len(),
            sent.len()
        );
    }

    /// A stream opened by one link is piped by the other to an echo
    /// server; a megabyte passes whole, in order, under flow control.
    #[tokio::test]
    async fn a_stream_carries_bytes_both_ways_under_flow_control() {
        let (relay, supervisor, mut opened) = linked().await;
        // An echo server, where the supervisor sends what it is opened for.
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let echo_addr = echo.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = echo.accept().await.unwrap();
            let (mut r, mut w) = socket.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
        });
        tokio::spawn(async move {
            let (stream, service) = opened.recv().await.unwrap();
            assert_eq!(service, "echo");
            let socket = TcpStream::connect(echo_addr).await.unwrap();
            supervisor.pipe(stream, socket, Vec::new()).await;
        });

        // The relay's side: a public connection piped into a new stream.
        let public = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let public_addr = public.local_addr().unwrap();
        let piping = tokio::spawn(async move {
            let (socket, _) = public.accept().await.unwrap();
            let stream = relay.open("echo").await;
            relay.pipe(stream, socket, Vec::new()).await;
        });
        let caller = TcpStream::connect(public_addr).await.unwrap();
        let sent: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        echoes(caller, &sent).await;
        piping.await.unwrap();
    }

    /// A carried stream is read and written like a socket, under the same
    /// flow control: four windows' worth echoed whole, in order, and its
    /// end seen by both sides.
    #[tokio::test]
    async fn a_carried_stream_reads_and_writes_like_a_socket() {
        use crate::proxy::ClientIo;
        let (relay, supervisor, mut opened) = linked().await;
        let echoing = tokio::spawn(async move {
            let (stream, _) = opened.recv().await.unwrap();
            let mut carried = supervisor.carry(stream);
            let mut first = [0u8; 3];
            assert_eq!(crate::proxy::client::peek(&mut carried, &mut first).await.unwrap(), 3);
            let (mut reading, mut writing) = carried.split();
            let echoed = tokio::io::copy(&mut reading, &mut writing).await.unwrap();
            writing.shutdown().await.unwrap();
            assert_eq!(&first, &[0, 1, 2], "peeked bytes are read again");
            echoed
        });

        let (public, caller) = tokio::io::duplex(64 * 1024);
        let stream = relay.open("echo").await;
        let piping = tokio::spawn(async move { relay.pipe(stream, public, Vec::new()).await });
        let sent: Vec<u8> = (0..4 * WINDOW).map(|i| (i % 251) as u8).collect();
        echoes(caller, &sent).await;
        assert_eq!(echoing.await.unwrap(), u64::from(4 * WINDOW));
        piping.await.unwrap();
    }
}
