//! Sockets and the processes holding them, as macOS tells: `libproc` lists
//! a process's descriptors (`proc_pidinfo(PROC_PIDLISTFDS)`) and describes
//! each socket with its addresses (`proc_pidfdinfo(PROC_PIDFDSOCKETINFO)`).
//! There are no socket inodes: a connection is known by its addresses.
//! (Linux: `sock_diag` and `/proc`; see `linux/sockets.rs`.)

use std::net::{Ipv4Addr, SocketAddrV4};

/// `PROC_PIDFDSOCKETINFO` (`sys/proc_info.h`): a socket descriptor's info.
const PROC_PIDFDSOCKETINFO: libc::c_int = 3;
/// `SOCKINFO_TCP`: what `soi_kind` says of a TCP socket.
const SOCKINFO_TCP: i32 = 2;
/// `TSI_S_LISTEN`: `tcpsi_state` of a listening socket.
const TSI_S_LISTEN: i32 = 1;

// Where `struct socket_fdinfo` (`sys/proc_info.h`) keeps what is read here.
// It is `proc_fileinfo` (24 bytes), then `socket_info`: `vinfo_stat` (136),
// `soi_so` and `soi_pcb` (8 each), `soi_type`, `soi_protocol` and
// `soi_family` (4 each), eight shorts, `soi_oobmark` (4), two
// `sockbuf_info` (24 each), `soi_kind` (4) and a reserved word (4): so
// `soi_family` is at 24 + 160, `soi_kind` at 24 + 232, and the protocol's
// union at 24 + 240 (528 bytes; 792 in all). For TCP the union starts with
// `in_sockinfo`: foreign port, local port (ints holding the port in network
// order), generation (8), flags and flow (4 each), version flag and TTL
// (bytes), a reserved word, then the foreign and local addresses (16 bytes
// each; IPv4 in the last 4) at 32 and 48, and the rest up to 80, where
// `tcp_sockinfo`'s `tcpsi_state` follows.
const SOCKET_FDINFO_SIZE: usize = 792;
const SOI_FAMILY: usize = 24 + 160;
const SOI_KIND: usize = 24 + 232;
const PROTO: usize = 24 + 240;
const FOREIGN_PORT: usize = PROTO;
const LOCAL_PORT: usize = PROTO + 4;
const LOCAL_IPV4: usize = PROTO + 48 + 12;
const TCP_STATE: usize = PROTO + 80;

/// The connection whose local address is `from` and remote is `to`, as
/// [`holds`] finds it: its addresses, packed (macOS has no socket inodes).
/// (Linux: the socket's inode, from `sock_diag`.)
pub fn socket_id(from: SocketAddrV4, to: SocketAddrV4) -> Option<u64> {
    Some(u64::from(from.ip().to_bits()) | (u64::from(from.port()) << 32) | (u64::from(to.port()) << 48))
}

/// The process group of `pid` (`getpgid`). (Linux: `/proc/<pid>/stat`.)
pub fn group_of(pid: u32) -> Option<u32> {
    let pid = libc::pid_t::try_from(pid).ok()?;
    // SAFETY: getpgid takes and returns plain integers.
    let group = unsafe { libc::getpgid(pid) };
    u32::try_from(group).ok()
}

/// Whether process `pid` has the connection `id` ([`socket_id`]) open: one
/// of its TCP sockets has its local address and remote port. (Linux:
/// `/proc/<pid>/fd`.)
pub fn holds(pid: u32, id: u64) -> bool {
    let from = SocketAddrV4::new(Ipv4Addr::from_bits(id as u32), (id >> 32) as u16);
    let to_port = (id >> 48) as u16;
    tcp_sockets(pid).any(|s| s.local == from && s.foreign_port == to_port)
}

/// Every process's pid (`proc_listallpids`). (Linux: `/proc`.)
pub fn processes() -> impl Iterator<Item = u32> {
    // SAFETY: a null buffer asks for the count; the second call is given
    // a buffer of the size passed.
    let pids = unsafe {
        let count = libc::proc_listallpids(std::ptr::null_mut(), 0).max(0) as usize;
        // Room for those started in between.
        let mut pids = vec![0 as libc::pid_t; count + 64];
        let size = (pids.len() * std::mem::size_of::<libc::pid_t>()) as libc::c_int;
        let got = libc::proc_listallpids(pids.as_mut_ptr().cast(), size).max(0) as usize;
        pids.truncate(got.min(pids.len()));
        pids
    };
    pids.into_iter()
        .filter_map(|pid| u32::try_from(pid).ok().filter(|&p| p > 0))
}

/// Who listens on `port`, as `` held by `nginx` (pid 123) ``: the process
/// with a listening TCP socket on it. (Linux: `/proc/net/tcp{,6}`.)
pub fn listener_of(port: u16) -> Option<String> {
    processes().find_map(|pid| {
        tcp_sockets(pid)
            .any(|s| s.listening && s.local.port() == port)
            .then(|| format!("held by `{}` (pid {pid})", name_of(pid)))
    })
}

/// A TCP socket of a process, as `libproc` describes it.
struct TcpSocket {
    local: SocketAddrV4,
    foreign_port: u16,
    listening: bool,
}

/// The IPv4 TCP sockets process `pid` holds.
fn tcp_sockets(pid: u32) -> impl Iterator<Item = TcpSocket> {
    let pid = libc::c_int::try_from(pid).unwrap_or(0);
    descriptors(pid)
        .into_iter()
        .filter(|fd| fd.proc_fdtype == libc::PROX_FDTYPE_SOCKET as u32)
        .filter_map(move |fd| socket_info(pid, fd.proc_fd))
}

/// Process `pid`'s open descriptors.
fn descriptors(pid: libc::c_int) -> Vec<libc::proc_fdinfo> {
    if pid <= 0 {
        return Vec::new();
    }
    // SAFETY: a null buffer asks for the size; the second call is given a
    // buffer of proc_fdinfo (plain data) of the size passed.
    unsafe {
        let size = libc::proc_pidinfo(pid, libc::PROC_PIDLISTFDS, 0, std::ptr::null_mut(), 0);
        if size <= 0 {
            return Vec::new();
        }
        let entry = std::mem::size_of::<libc::proc_fdinfo>();
        let mut fds: Vec<libc::proc_fdinfo> = vec![std::mem::zeroed(); size as usize / entry + 16];
        let given = (fds.len() * entry) as libc::c_int;
        let got = libc::proc_pidinfo(pid, libc::PROC_PIDLISTFDS, 0, fds.as_mut_ptr().cast(), given);
        fds.truncate(got.max(0) as usize / entry);
        fds
    }
}

/// What `libproc` says of socket `fd` of process `pid`, when it is IPv4 TCP.
fn socket_info(pid: libc::c_int, fd: i32) -> Option<TcpSocket> {
    // u64s, for the struct's alignment.
    let mut words = [0u64; SOCKET_FDINFO_SIZE / 8];
    // SAFETY: the buffer has the size passed; the call fills it with plain data.
    let got = unsafe {
        libc::proc_pidfdinfo(
            pid,
            fd,
            PROC_PIDFDSOCKETINFO,
            words.as_mut_ptr().cast(),
            SOCKET_FDINFO_SIZE as libc::c_int,
        )
    };
    if got != SOCKET_FDINFO_SIZE as libc::c_int {
        return None;
    }
    // SAFETY: a view of the same bytes, which outlive it.
    let info: &[u8] = unsafe { std::slice::from_raw_parts(words.as_ptr().cast(), SOCKET_FDINFO_SIZE) };
    parse(info)
}

/// A TCP socket from a `socket_fdinfo`'s bytes; `None` for any other.
fn parse(info: &[u8]) -> Option<TcpSocket> {
    let int = |at: usize| Some(i32::from_ne_bytes(info.get(at..at + 4)?.try_into().ok()?));
    if int(SOI_KIND)? != SOCKINFO_TCP || int(SOI_FAMILY)? != libc::AF_INET {
        return None;
    }
    // The port's two bytes in network order, first in the int's memory.
    let port = |at: usize| Some(u16::from_be_bytes(info.get(at..at + 2)?.try_into().ok()?));
    let ip: [u8; 4] = info.get(LOCAL_IPV4..LOCAL_IPV4 + 4)?.try_into().ok()?;
    Some(TcpSocket {
        local: SocketAddrV4::new(Ipv4Addr::from(ip), port(LOCAL_PORT)?),
        foreign_port: port(FOREIGN_PORT)?,
        listening: int(TCP_STATE)? == TSI_S_LISTEN,
    })
}

/// Process `pid`'s name (`proc_name`), or `?`.
fn name_of(pid: u32) -> String {
    let mut name = [0u8; 256];
    let pid = libc::c_int::try_from(pid).unwrap_or(0);
    // SAFETY: the buffer has the size passed.
    let got = unsafe { libc::proc_name(pid, name.as_mut_ptr().cast(), name.len() as u32) };
    match usize::try_from(got) {
        Ok(len) if len > 0 => String::from_utf8_lossy(&name[..len.min(name.len())]).into_owned(),
        _ => "?".to_owned(),
    }
}
