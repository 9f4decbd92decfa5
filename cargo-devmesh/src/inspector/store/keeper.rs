//! The store's own thread: it moves full stages into the ring, woken when
//! one fills, and tells live listeners what changed, a tick at a time
//! while there are any.

use std::sync::{TryLockError, Weak};
use std::time::Instant;

use super::live::TICK;
use super::{Core, Ring, lock};

/// The keeper's thread, to wake it.
#[derive(Debug)]
pub(super) struct Keeper(pub(super) std::thread::Thread);

impl Keeper {
    pub(super) fn start(core: Weak<Core>) -> std::io::Result<Keeper> {
        let thread = std::thread::Builder::new()
            .name("devmesh-inspector".into())
            .spawn(move || {
                let (mut ticking, mut news, mut told) = (false, Vec::new(), Instant::now());
                loop {
                    if ticking {
                        std::thread::park_timeout(TICK.saturating_sub(told.elapsed()));
                    } else {
                        std::thread::park();
                    }
                    let Some(core) = core.upgrade() else { return };
                    core.keep_stages();
                    // Full stages wake the keeper far more often than it ticks.
                    if !ticking || told.elapsed() >= TICK {
                        core.tell_listeners(&mut news);
                        told = Instant::now();
                    }
                    ticking = core.listening();
                }
            })?;
        Ok(Keeper(thread.thread().clone()))
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        self.0.unpark();
    }
}

impl Core {
    /// Moves full stages into the ring. Readers hold the ring's lock from
    /// before a trade until after its copy, so they see each record either
    /// staged or in the ring.
    fn keep_stages(&self) {
        self.keep_stages_in(&mut lock(&self.ring));
    }

    /// Moves full stages into the ring unless a reader holds it (a search
    /// of a full ring takes tens of milliseconds); says whether it did.
    pub(super) fn try_keep_stages(&self) -> bool {
        match self.ring.try_lock() {
            Ok(mut ring) => self.keep_stages_in(&mut ring),
            Err(TryLockError::Poisoned(poisoned)) => self.keep_stages_in(&mut poisoned.into_inner()),
            Err(TryLockError::WouldBlock) => return false,
        }
        true
    }

    fn keep_stages_in(&self, ring: &mut Ring) {
        for shard in &self.shards {
            {
                let mut inner = lock(&shard.0);
                if !inner.stage.is_full() {
                    continue;
                }
                ring.trade(&mut inner.stage);
            }
            ring.keep_traded();
        }
    }
}
