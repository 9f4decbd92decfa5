//! Connections to an instance: one per client connection while it lasts,
//! then kept in a pool for the next.

use std::io;
use std::net::SocketAddr;

use tokio::net::TcpStream;

use super::relay::Buffer;

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
    pub fn take(&self, addr: SocketAddr) -> Option<Upstream> {
        let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(upstream) = kept.pop() {
            if upstream.addr == addr && upstream.is_usable() {
                return Some(upstream);
            }
        }
        None
    }

    pub fn give(&self, upstream: Upstream) {
        let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if kept.len() < POOL && upstream.is_usable() {
            kept.push(upstream);
        }
    }
}

#[derive(Debug)]
pub struct Upstream {
    pub addr: SocketAddr,
    pub stream: TcpStream,
    /// What the instance sent and the proxy has not relayed yet.
    pub buffer: Buffer,
}

impl Upstream {
    pub async fn connect(addr: SocketAddr) -> io::Result<Upstream> {
        let stream = TcpStream::connect(addr).await?;
        let _ = stream.set_nodelay(true);
        Ok(Upstream {
            addr,
            stream,
            buffer: Buffer::new(),
        })
    }

    /// Lets the connection go without a reset, in the background (see
    /// [`super::linger`]): the instance reads the end of the connection as
    /// it would a client's close, never an RST.
    pub fn retire(mut self) {
        tokio::spawn(async move { super::linger(&mut self.stream).await });
    }

    /// Whether the kept connection can carry a request: the instance has
    /// not closed it and sent nothing unasked. Readiness is known from the
    /// last poll, so this costs no system call.
    pub fn is_usable(&self) -> bool {
        self.buffer.filled().is_empty()
            && matches!(self.stream.try_read(&mut [0u8; 1]), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}
