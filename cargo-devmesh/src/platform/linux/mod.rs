//! Linux's own calls (see the table in `platform`).

pub mod sockets;

use std::io;
use std::os::fd::RawFd;

/// Lowers the priority of the calling thread (nice 10), so that a thread
/// that may be kept busy (reading a service that prints without end)
/// yields to the supervisor's other threads whenever they have work. A
/// Linux thread is a task of its own, which `setpriority` takes by id.
/// (macOS: the thread's QoS class, utility.)
pub fn lower_this_threads_priority() {
    // SAFETY: gettid and setpriority take and return plain integers.
    unsafe {
        let thread = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, thread as libc::id_t, 10);
    }
}

/// Whether process `pid` is stopped by a signal (SIGSTOP, SIGTSTP, a
/// debugger), from the state letter in `/proc/<pid>/stat`. (macOS:
/// `proc_pidinfo`'s BSD info, `SSTOP`.)
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
/// 2.6 ms). (macOS: nothing; its `posix_spawn` copies no pages.)
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

/// Makes descriptor `at` a copy of `fd`, closed on exec or inherited as
/// `close_on_exec` says, in one call (`dup3`). (macOS: `dup2`, then
/// `fcntl`; the caller holds the only other user of `at`.)
pub fn place_fd(fd: RawFd, at: RawFd, close_on_exec: bool) -> io::Result<()> {
    let flags = if close_on_exec { libc::O_CLOEXEC } else { 0 };
    // SAFETY: dup3 takes plain descriptors; `at` is the caller's to replace.
    match unsafe { libc::dup3(fd, at, flags) } {
        -1 => Err(io::Error::last_os_error()),
        _ => Ok(()),
    }
}
