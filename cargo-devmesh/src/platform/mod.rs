//! Every call that is one platform's own, in one place: devmesh is built
//! and tested on Linux, and built and linted for macOS on every change
//! (`.ci/macos-check`). The calls POSIX has are here once; the others
//! are in `linux/` and `macos/`, with the same signatures, each saying
//! how the other system does it. Any other system fails to compile here,
//! with one message.
//!
//! | here | Linux | macOS |
//! | --- | --- | --- |
//! | [`sockets`] | `sock_diag`, `/proc/net/tcp`, `/proc/<pid>/fd` | `libproc`: `proc_pidinfo(PROC_PIDLISTFDS)`, `proc_pidfdinfo(PROC_PIDFDSOCKETINFO)` |
//! | [`is_stopped`] | `/proc/<pid>/stat` | `proc_pidinfo(PROC_PIDTBSDINFO)`'s `pbi_status` |
//! | [`leave_out_of_forks`] | `madvise(MADV_DONTFORK)` | nothing: services are spawned with `posix_spawn`, which copies no pages |
//! | [`lower_this_threads_priority`] | `setpriority` on the thread's id | `pthread_set_qos_class_self_np(QOS_CLASS_UTILITY)` |
//! | [`place_fd`] | `dup3` | `dup2`, then `fcntl(F_SETFD)` |
//! | [`lock`], [`signal_group`], [`process_exists`] | `flock`, `kill` | the same calls: POSIX (flock is BSD's own) |
//! | [`listen`], [`reset_on_close`] | `listen` again, with a deeper backlog; `SO_LINGER` 0 | the same calls |
//!
//! Outside this module: the watchdog is a POSIX shell script; the
//! registry's file watch goes through the `notify` crate (inotify on
//! Linux, kqueue on macOS); spawning uses `posix_spawn` through std.

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
compile_error!(
    "devmesh runs on Linux and macOS only: its supervisor asks the system which process holds a \
     connection, which it has no way to ask elsewhere"
);

#[cfg(target_os = "linux")]
#[path = "linux/mod.rs"]
mod os;
#[cfg(target_os = "macos")]
#[path = "macos/mod.rs"]
mod os;

pub use os::{is_stopped, leave_out_of_forks, lower_this_threads_priority, place_fd, sockets};

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
