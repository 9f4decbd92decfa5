//! Which service sent a request: the connection's source port, looked up
//! in `/proc/net/tcp`, names a socket; the service process holding that
//! socket is the caller. Anything else is `external`.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Mutex;

/// What a caller that is no known service is called.
pub const EXTERNAL: &str = "external";

/// Service processes by pid, kept by the supervisor.
#[derive(Debug, Default)]
pub struct Callers {
    pids: Mutex<HashMap<u32, String>>,
}

impl Callers {
    pub fn insert(&self, pid: u32, service: &str) {
        self.lock().insert(pid, service.to_owned());
    }

    pub fn remove(&self, pid: u32) {
        self.lock().remove(&pid);
    }

    /// The service whose process opened the connection from `peer` to `local`.
    pub fn identify(&self, peer: SocketAddr, local: SocketAddr) -> String {
        let (SocketAddr::V4(peer), SocketAddr::V4(local)) = (peer, local) else {
            return EXTERNAL.to_owned();
        };
        if !peer.ip().is_loopback() {
            return EXTERNAL.to_owned();
        }
        let Some(inode) = socket_inode(peer, local) else {
            return EXTERNAL.to_owned();
        };
        let needle = format!("socket:[{inode}]");
        let pids = self.lock().clone();
        pids.into_iter()
            .find(|(pid, _)| holds(*pid, &needle))
            .map_or_else(|| EXTERNAL.to_owned(), |(_, service)| service)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, String>> {
        self.pids.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The inode of the socket whose local address is `from` and remote is `to`.
fn socket_inode(from: SocketAddrV4, to: SocketAddrV4) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (local, remote, inode) = (fields.get(1)?, fields.get(2)?, fields.get(9)?);
        (parse(local)? == from && parse(remote)? == to).then(|| inode.parse().ok())?
    })
}

/// `0100007F:1F90` → 127.0.0.1:8080 (the address in host byte order as
/// the kernel prints it, the port big-endian).
fn parse(text: &str) -> Option<SocketAddrV4> {
    let (ip, port) = text.split_once(':')?;
    let ip = u32::from_str_radix(ip, 16).ok()?;
    let port = u16::from_str_radix(port, 16).ok()?;
    Some(SocketAddrV4::new(Ipv4Addr::from(ip.to_ne_bytes()), port))
}

/// Whether process `pid` has `socket:[inode]` open.
fn holds(pid: u32, needle: &str) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten()
        .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target.as_os_str() == needle))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn finds_the_process_behind_a_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_server, peer) = listener.accept().unwrap();
        let callers = Callers::default();
        let local = listener.local_addr().unwrap();
        assert_eq!(callers.identify(peer, local), EXTERNAL);
        callers.insert(std::process::id(), "me");
        assert_eq!(callers.identify(peer, local), "me");
        drop(client);
    }

    #[test]
    fn parses_proc_addresses() {
        assert_eq!(parse("0100007F:1F90"), Some("127.0.0.1:8080".parse().unwrap()));
    }
}
