//! Every call that is one platform's own, in one place, with the portable
//! way beside each: devmesh is built and tested on Linux, and most of its
//! users' laptops are macOS, so a port should be this module's work.
//!
//! | here | Linux | elsewhere |
//! | --- | --- | --- |
//! | [`sockets`] | `sock_diag`, `/proc/net/tcp`, `/proc/<pid>/fd` | `libproc` (`proc_pidinfo`) on macOS; until then callers are `external` |
//! | [`is_stopped`] | `/proc/<pid>/stat` | `proc_pidinfo(PROC_PIDTBSDINFO)`'s `pbi_status == SSTOP`; until then `false` |
//! | [`leave_out_of_forks`] | `madvise(MADV_DONTFORK)` | `minherit(VM_INHERIT_NONE)` on macOS and the BSDs; nothing is lost without it but a restart's speed under load |
//! | [`lock`], [`signal_group`], [`process_exists`] | `flock`, `kill` | the same calls: POSIX (flock is BSD's own) |
//! | [`lower_this_threads_priority`] | `setpriority` on the thread's id | `pthread_set_qos_class_self_np` on macOS; until then nothing |
//! | [`listen`], [`reset_on_close`] | `listen` again, with a deeper backlog; `SO_LINGER` 0 | the same calls: POSIX |
//!
//! Outside this module: the watchdog is a POSIX shell script; the
//! registry's file watch goes through the `notify` crate (inotify here,
//! FSEvents/kqueue elsewhere); spawning uses `posix_spawn` through std.

pub mod sockets;

use std::io;
use std::os::fd::AsRawFd;

/// Connections a listener keeps waiting to be accepted (the kernel caps
/// it at `somaxconn`). std's 128 overflows when a client pool opens a
/// thousand connections at once: the kernel drops the SYNs past it, and
/// each of those connections waits a second for its retry.
pub const BACKLOG: libc::c_int = 4096;

/// A TCP listener on `addr` with a backlog of [`BACKLOG`].
pub fn listen(addr: std::net::SocketAddr) -> io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    // SAFETY: `listen` on a socket this function owns; no memory is passed.
    if unsafe { libc::listen(listener.as_raw_fd(), BACKLOG) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(listener)
}

/// Makes `socket` close with a reset (RST), not a FIN, when it is
/// dropped: to its peer, the connection was refused or broken, not ended.
pub fn reset_on_close(socket: &impl AsRawFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on an open socket, with a linger struct of the
    // size passed.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            std::ptr::from_ref(&linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// Closes `stream` with a reset.
pub fn reset(stream: tokio::net::TcpStream) {
    reset_on_close(&stream);
}

/// Whether process `pid` exists.
pub fn process_exists(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

/// Sends `signal` to process group `group` (a service's own, which it
/// leads: this reaches nothing else).
pub fn signal_group(group: u32, signal: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::kill(-(group as libc::pid_t), signal);
    }
}

/// Takes an exclusive `flock` on `file`, waiting for it when `wait`;
/// `Ok(false)`: another holds it and `wait` was not asked. The kernel lets
/// it go when the file is closed, however the process ends.
pub fn lock(file: &std::fs::File, wait: bool) -> io::Result<bool> {
    let how = if wait {
        libc::LOCK_EX
    } else {
        libc::LOCK_EX | libc::LOCK_NB
    };
    // SAFETY: flock on a descriptor `file` owns, for as long as it lives.
    if unsafe { libc::flock(file.as_raw_fd(), how) } == 0 {
        return Ok(true);
    }
    let error = io::Error::last_os_error();
    match error.kind() {
        io::ErrorKind::WouldBlock => Ok(false),
        _ => Err(error),
    }
}

/// Lowers the priority of the calling thread (nice 10), so that a thread
/// that may be kept busy (reading a service that prints without end)
/// yields to the supervisor's other threads whenever they have work. On
/// Linux a thread is a task of its own, which `setpriority` takes by id;
/// elsewhere (macOS) the whole process would change, so it does nothing.
pub fn lower_this_threads_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: gettid and setpriority take and return plain integers.
    unsafe {
        let thread = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, thread as libc::id_t, 10);
    }
}

/// Whether process `pid` is stopped by a signal (SIGSTOP, SIGTSTP, a
/// debugger), from the state letter in `/proc/<pid>/stat`.
pub fn is_stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // The command name in parentheses may hold spaces: the state follows its `)`.
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('T') || rest.starts_with('t'))
    })
}

/// Leaves the whole pages of `buffer` out of forked children. A child
/// execs at once and never reads them; without this a fork copies the page
/// tables of all of them (the inspector's ring, once traffic filled it: a
/// restart after 5 s of load took 7.8 ms from spawn to ready instead of
/// 2.6 ms).
pub fn leave_out_of_forks(buffer: &[u8]) {
    // SAFETY: sysconf has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let start = (buffer.as_ptr() as usize).next_multiple_of(page);
    let end = (buffer.as_ptr() as usize + buffer.len()) / page * page;
    if end > start {
        // SAFETY: the range is whole pages inside `buffer`'s allocation,
        // which outlives every fork; MADV_DONTFORK changes only what a
        // child inherits, never this process's view of the memory.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTFORK);
        }
    }
}

#[cfg(test)]
mod tests {
    /// A burst of connections that nothing accepts yet all connect: with
    /// std's backlog of 128, the kernel drops the SYNs past it and those
    /// connections wait a second for their retry.
    #[test]
    fn a_listener_takes_a_burst_of_a_thousand_connections() {
        let listener = super::listen(([127, 0, 0, 1], 0).into()).unwrap();
        let addr = listener.local_addr().unwrap();
        let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(4096);
        let burst = 1000.min(somaxconn);
        let connected: Vec<_> = (0..burst)
            .map(|i| {
                std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(500))
                    .unwrap_or_else(|e| panic!("connection {i} of a burst of {burst}: {e}"))
            })
            .collect();
        assert_eq!(connected.len(), burst);
    }
}
