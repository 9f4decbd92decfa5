//! macOS's own calls (see the table in `platform`). Built and linted on
//! every change, not run by CI: no Mac is at hand.

pub mod sockets;

use std::io;
use std::os::fd::RawFd;

/// `QOS_CLASS_UTILITY` (`sys/qos.h`): work the user does not wait on.
const QOS_CLASS_UTILITY: libc::c_uint = 0x11;

unsafe extern "C" {
    /// `pthread/qos.h`: sets the calling thread's QoS class.
    fn pthread_set_qos_class_self_np(class: libc::c_uint, relative_priority: libc::c_int) -> libc::c_int;
}

/// Lowers the priority of the calling thread, so that a thread that may
/// be kept busy (reading a service that prints without end) yields to the
/// supervisor's other threads: its QoS class becomes utility. (Linux:
/// `setpriority` on the thread's id, nice 10.)
pub fn lower_this_threads_priority() {
    // SAFETY: a plain call on the calling thread, with constants.
    unsafe {
        pthread_set_qos_class_self_np(QOS_CLASS_UTILITY, 0);
    }
}

/// Whether process `pid` is stopped by a signal (SIGSTOP, SIGTSTP, a
/// debugger): its BSD info's status is `SSTOP`. (Linux: `/proc/<pid>/stat`.)
pub fn is_stopped(pid: u32) -> bool {
    let Ok(pid) = libc::c_int::try_from(pid) else {
        return false;
    };
    // SAFETY: proc_bsdinfo is plain data; the size passed is its own.
    unsafe {
        let mut info: libc::proc_bsdinfo = std::mem::zeroed();
        let size = std::mem::size_of::<libc::proc_bsdinfo>() as libc::c_int;
        let got = libc::proc_pidinfo(pid, libc::PROC_PIDTBSDINFO, 0, (&raw mut info).cast(), size);
        got == size && info.pbi_status == libc::SSTOP
    }
}

/// Nothing on macOS: services are spawned with `posix_spawn`, which copies
/// none of the supervisor's pages, `buffer`'s included. (Linux:
/// `madvise(MADV_DONTFORK)`, for its fork fallback's sake too.)
pub fn leave_out_of_forks(buffer: &[u8]) {
    let _ = buffer;
}

/// Makes descriptor `at` a copy of `fd`, closed on exec or inherited as
/// `close_on_exec` says: `dup2`, then `fcntl`, which macOS has no single
/// call for; the caller holds the only other user of `at`. (Linux: `dup3`.)
pub fn place_fd(fd: RawFd, at: RawFd, close_on_exec: bool) -> io::Result<()> {
    let flags = if close_on_exec { libc::FD_CLOEXEC } else { 0 };
    // SAFETY: dup2 and fcntl take plain descriptors; `at` is the caller's.
    unsafe {
        if libc::dup2(fd, at) == -1 || libc::fcntl(at, libc::F_SETFD, flags) == -1 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
