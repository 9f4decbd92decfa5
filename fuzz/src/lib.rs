//! What every fuzz binary shares: an allocator that counts, so that a
//! decoder is held to allocating no more than its input allows (a length
//! field that claims 4 GiB is a refusal, never an allocation), and the
//! call of a target under that bound.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The system's allocator, counting the bytes live and the most live since
/// the last [`bounded`] began.
pub struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call goes to `System` as it came; the counters are only
// counters.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(live, Ordering::Relaxed);
        // SAFETY: as the caller promised `GlobalAlloc::alloc`.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: as the caller promised `GlobalAlloc::dealloc`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Bytes a target may hold at once beyond what was live before it, for
/// `len` bytes of input: a small multiple of them and a fixed allowance
/// (a parser's own buffers and formatted messages), or none for the
/// targets that run a whole runtime or a config library (`None`).
fn budget(target: &str, len: usize) -> Option<usize> {
    match target {
        "tunnel_link" | "config" | "relay_config" | "registry" => None,
        _ => Some(64 * len + 256 * 1024),
    }
}

/// Runs the target `name` on `data`, and fails when it held more than its budget.
pub fn bounded(name: &str, data: &[u8]) {
    let target = cargo_devmesh::fuzzing::target(name);
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    target(data);
    if let Some(budget) = budget(name, data.len()) {
        let held = PEAK.load(Ordering::Relaxed).saturating_sub(before);
        assert!(held <= budget, "{name} held {held} bytes at once for {} bytes of input", data.len());
    }
}
