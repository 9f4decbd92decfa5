//! What a front port serves: a TCP connection it accepted, or a stream the
//! tunnel carried in from the relay. Both are served by the same code (the
//! same capture, routing, faults and restarts); a carried stream is handed
//! over in the supervisor's process, with no loopback socket between.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::{ReadHalf, WriteHalf};

/// Reads bytes without taking them: the next read returns them again.
pub trait Peek {
    fn poll_peek(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<usize>>;
}

/// Waits for bytes and copies the first of them into `buf`, leaving them
/// to be read; 0 once the other end closed.
pub async fn peek(from: &mut impl Peek, buf: &mut [u8]) -> io::Result<usize> {
    let mut buf = ReadBuf::new(buf);
    std::future::poll_fn(|cx| from.poll_peek(cx, &mut buf)).await
}

/// A connection a front port serves.
pub trait ClientIo: AsyncRead + AsyncWrite + Peek + Send + Unpin + 'static {
    type Reader<'a>: AsyncRead + Peek + Send + Unpin
    where
        Self: 'a;
    type Writer<'a>: AsyncWrite + Send + Unpin
    where
        Self: 'a;

    /// Its two directions, to be used at once.
    fn split(&mut self) -> (Self::Reader<'_>, Self::Writer<'_>);

    /// Makes it end as abruptly as it can once dropped (a fault set on
    /// the front port): a TCP connection with a reset.
    fn reset_on_close(&self);
}

impl<P: Peek> Peek for &mut P {
    fn poll_peek(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<usize>> {
        (**self).poll_peek(cx, buf)
    }
}

impl Peek for TcpStream {
    fn poll_peek(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<usize>> {
        TcpStream::poll_peek(self, cx, buf)
    }
}

impl Peek for ReadHalf<'_> {
    fn poll_peek(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<usize>> {
        ReadHalf::poll_peek(self, cx, buf)
    }
}

impl ClientIo for TcpStream {
    type Reader<'a> = ReadHalf<'a>;
    type Writer<'a> = WriteHalf<'a>;

    fn split(&mut self) -> (ReadHalf<'_>, WriteHalf<'_>) {
        TcpStream::split(self)
    }

    fn reset_on_close(&self) {
        crate::platform::reset_on_close(self);
    }
}

/// One client connection: who is on the other end, found once.
pub(super) struct ClientConnection {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub caller: tokio::sync::OnceCell<Arc<str>>,
}

impl ClientConnection {
    /// A connection accepted from `peer`: its caller is found when needed.
    pub fn accepted(peer: SocketAddr, local: SocketAddr) -> ClientConnection {
        ClientConnection {
            peer,
            local,
            caller: tokio::sync::OnceCell::new(),
        }
    }

    /// A connection handed over in this process, whose caller is known.
    pub fn handed(caller: &str, local: SocketAddr) -> ClientConnection {
        ClientConnection {
            peer: local,
            local,
            caller: tokio::sync::OnceCell::new_with(Some(caller.into())),
        }
    }

    /// The service that opened this connection. Finding it asks the kernel
    /// and reads the services' open files in `/proc`: it is done on the
    /// blocking pool, so only this connection's first request waits for it.
    pub async fn caller(&self, inspector: &Arc<crate::inspector::Inspector>) -> Arc<str> {
        let caller = self
            .caller
            .get_or_init(|| async {
                let (inspector, peer, local) = (Arc::clone(inspector), self.peer, self.local);
                tokio::task::spawn_blocking(move || inspector.callers.identify(peer, local))
                    .await
                    .map_or_else(|_| crate::inspector::EXTERNAL.into(), Arc::from)
            })
            .await;
        Arc::clone(caller)
    }
}
