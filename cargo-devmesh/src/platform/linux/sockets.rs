//! Sockets and the processes holding them, as Linux tells: one TCP
//! connection looked up by its addresses with a `sock_diag` query (as `ss`
//! does), else in `/proc/net/tcp`, is known by its inode; a process's
//! sockets are in `/proc/<pid>/fd`, its process group in `/proc/<pid>/stat`.
//! (macOS has no `/proc` and no socket inodes: `libproc` lists a
//! process's sockets with their addresses; see `macos/sockets.rs`.)

use std::net::SocketAddrV4;

/// The socket whose local address is `from` and remote is `to`, as
/// [`holds`] finds it: here, its inode. (macOS: the addresses themselves.)
pub fn socket_id(from: SocketAddrV4, to: SocketAddrV4) -> Option<u64> {
    match diag::inode(from, to) {
        Ok(inode) => inode,
        Err(_) => scan_proc(from, to),
    }
}

/// [`socket_id`] from the whole table in `/proc/net/tcp`.
fn scan_proc(from: SocketAddrV4, to: SocketAddrV4) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    // The table is long on a busy machine: compare text, parse one line.
    let (from, to) = (proc_form(from), proc_form(to));
    table.lines().skip(1).find_map(|line| {
        let mut fields = line.split_ascii_whitespace();
        let (local, remote) = (fields.nth(1)?, fields.next()?);
        (local == from && remote == to).then(|| fields.nth(6)?.parse().ok())?
    })
}

/// An address as `/proc/net/tcp` prints it: 127.0.0.1:8080 is
/// `0100007F:1F90` (the address in host byte order, the port big-endian).
fn proc_form(addr: SocketAddrV4) -> String {
    format!("{:08X}:{:04X}", u32::from_ne_bytes(addr.ip().octets()), addr.port())
}

/// The process group of `pid`, from `/proc/<pid>/stat`. (macOS: `getpgid`.)
pub fn group_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the name in parentheses: state, parent, group.
    stat.rsplit_once(") ")?.1.split(' ').nth(2)?.parse().ok()
}

/// Whether process `pid` has the socket `inode` ([`socket_id`]) open, from
/// `/proc/<pid>/fd`. (macOS: its sockets' addresses, from `libproc`.)
pub fn holds(pid: u32, inode: u64) -> bool {
    let needle = format!("socket:[{inode}]");
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten()
        .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target.as_os_str() == needle.as_str()))
}

/// Every process's pid, from `/proc`. (macOS: `proc_listallpids`.)
pub fn processes() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
}

/// Who listens on `port`, as `` held by `nginx` (pid 123) ``, from the
/// listening sockets in `/proc/net/tcp{,6}` and the processes holding them.
/// (macOS: each process's listening sockets, from `libproc`.)
pub fn listener_of(port: u16) -> Option<String> {
    let inode = ["/proc/net/tcp", "/proc/net/tcp6"].iter().find_map(|table| {
        let table = std::fs::read_to_string(table).ok()?;
        table.lines().skip(1).find_map(|line| {
            let fields: Vec<&str> = line.split_ascii_whitespace().collect();
            let local_port = fields.get(1)?.rsplit_once(':')?.1;
            // State 0A: listening.
            (u16::from_str_radix(local_port, 16).ok()? == port && *fields.get(3)? == "0A")
                .then(|| fields.get(9)?.parse::<u64>().ok())?
        })
    })?;
    processes().find_map(|pid| {
        let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        holds(pid, inode).then(|| format!("held by `{}` (pid {pid})", name.trim()))
    })
}

/// One TCP socket looked up by its addresses over `NETLINK_SOCK_DIAG`
/// (`linux/inet_diag.h`), as `ss` does, without listing the others.
mod diag {
    use std::io;
    use std::net::SocketAddrV4;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    /// `nlmsghdr` (16 bytes), then `inet_diag_req_v2` (56).
    const REQUEST_LEN: usize = 16 + 56;
    /// Where `idiag_inode` is in a reply: `nlmsghdr`, then
    /// `inet_diag_msg`'s family, state, timer, retrans (4), `inet_diag_sockid`
    /// (48), expires, rqueue, wqueue, uid (16).
    const INODE_AT: usize = 16 + 4 + 48 + 16;

    /// The inode of the socket from `from` to `to`; `Ok(None)` when there
    /// is none, `Err` when the kernel would not say.
    pub fn inode(from: SocketAddrV4, to: SocketAddrV4) -> io::Result<Option<u64>> {
        // SAFETY: plain system calls on a socket this function owns, with
        // buffers that outlive them and lengths that match.
        unsafe {
            let fd = libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                libc::NETLINK_SOCK_DIAG,
            );
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let socket = OwnedFd::from_raw_fd(fd);
            let request = request(from, to);
            let mut kernel: libc::sockaddr_nl = std::mem::zeroed();
            kernel.nl_family = libc::AF_NETLINK as u16;
            let sent = libc::sendto(
                socket.as_raw_fd(),
                request.as_ptr().cast(),
                request.len(),
                0,
                (&raw const kernel).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            );
            if sent < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut reply = [0u8; 512];
            let got = libc::recv(socket.as_raw_fd(), reply.as_mut_ptr().cast(), reply.len(), 0);
            if got < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(parse(&reply[..got as usize]))
        }
    }

    /// A request for the one socket with these addresses, in any state.
    fn request(from: SocketAddrV4, to: SocketAddrV4) -> [u8; REQUEST_LEN] {
        let mut out = [0u8; REQUEST_LEN];
        out[0..4].copy_from_slice(&(REQUEST_LEN as u32).to_ne_bytes());
        out[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        out[6..8].copy_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
        // inet_diag_req_v2: family, protocol, ext, pad, states.
        out[16] = libc::AF_INET as u8;
        out[17] = libc::IPPROTO_TCP as u8;
        out[20..24].copy_from_slice(&u32::MAX.to_ne_bytes());
        // inet_diag_sockid: ports and addresses in network order, then the
        // interface (any) and the cookie (none: look up by addresses).
        out[24..26].copy_from_slice(&from.port().to_be_bytes());
        out[26..28].copy_from_slice(&to.port().to_be_bytes());
        out[28..32].copy_from_slice(&from.ip().octets());
        out[44..48].copy_from_slice(&to.ip().octets());
        out[64..72].copy_from_slice(&[0xff; 8]);
        out
    }

    /// The inode in a reply; `None` for an error reply (no such socket).
    fn parse(reply: &[u8]) -> Option<u64> {
        let kind = u16::from_ne_bytes(reply.get(4..6)?.try_into().ok()?);
        if kind != SOCK_DIAG_BY_FAMILY {
            return None;
        }
        let inode = u32::from_ne_bytes(reply.get(INODE_AT..INODE_AT + 4)?.try_into().ok()?);
        Some(u64::from(inode))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{SocketAddr, TcpListener, TcpStream};

    #[test]
    fn the_kernel_and_proc_name_the_same_socket() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (SocketAddr::V4(from), SocketAddr::V4(to)) = (client.local_addr().unwrap(), client.peer_addr().unwrap())
        else {
            unreachable!("bound on IPv4")
        };
        let found = diag::inode(from, to).unwrap();
        assert!(found.is_some());
        assert_eq!(found, scan_proc(from, to));
        let unused = SocketAddrV4::new(*from.ip(), 1);
        assert_eq!(diag::inode(unused, to).unwrap(), None);
    }

    #[test]
    fn writes_addresses_as_proc_does() {
        assert_eq!(proc_form("127.0.0.1:8080".parse().unwrap()), "0100007F:1F90");
    }
}
