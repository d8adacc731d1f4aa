//! Giving freed memory back to the operating system.
//!
//! A persist cycle frees hundreds of MiB at once: the frozen rows, their sorted pieces,
//! the encoded files and the rollup rows. glibc's allocator keeps most of that in its
//! arenas for reuse (large blocks included, once its mmap threshold has grown), so the
//! process's resident memory stays at the cycle's peak while the engine holds far less.
//! With a million plugs, 0.9 GB of 3.1 GB resident after two cycles was such free
//! memory (see "A million plugs" in the README). `malloc_trim` returns it.
//!
//! Not while writes keep coming, though ([`TrimAfterCycle`]): the next cycle's buffer
//! reuses that memory, and memory handed back costs the write path a page fault per
//! 4 KiB when it is touched again (2-10 µs each on the development machine), besides
//! the arena locks `malloc_trim` holds while it walks them.
//!
//! The `wattdb` binary allocates with jemalloc instead (glibc's arenas kept freed
//! cycles fragmented, so resident memory crept up over long runs), whose background
//! threads hand back pages unused for its decay time on their own. There this trim
//! reaches only glibc's heap, which C libraries such as zstd allocate from; it matters
//! to programs that embed the engine with glibc's allocator.

use std::time::{Duration, Instant};

/// Returns the allocator's free memory to the system; a no-op where the allocator is
/// not glibc's.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub(crate) fn release_free() {
    // SAFETY: malloc_trim only walks glibc's own free lists and has no preconditions;
    // memory in use is untouched.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(crate) fn release_free() {}

/// How often a pending trim looks at the write rate.
const TRIM_CHECK: Duration = Duration::from_secs(1);

/// When free memory goes back to the system after a persist cycle: at once if the cycle
/// left the buffer empty, else once the buffer grows by less than `quiet_bytes` a
/// second. Under sustained load that is not before the load drops; resident memory
/// then stays at the cycle's peak, which the next cycle needs again.
#[derive(Debug)]
pub(crate) struct TrimAfterCycle {
    quiet_bytes: usize,
    /// When the buffer was last looked at, and its bytes then.
    pending: Option<(Instant, usize)>,
}

impl TrimAfterCycle {
    pub(crate) fn new(quiet_bytes: usize) -> Self {
        Self {
            quiet_bytes,
            pending: None,
        }
    }

    /// A cycle persisted rows; `buffered` is what the buffer holds now.
    pub(crate) fn cycle_done(&mut self, now: Instant, buffered: usize) {
        if buffered == 0 {
            self.trim();
        } else {
            self.pending = Some((now, buffered));
        }
    }

    /// Called between cycles; trims once writes have slowed down.
    pub(crate) fn tick(&mut self, now: Instant, buffered: usize) {
        let Some((looked, before)) = self.pending else {
            return;
        };
        let waited = now.saturating_duration_since(looked);
        if waited < TRIM_CHECK {
            return;
        }
        let per_second = buffered.saturating_sub(before) as f64 / waited.as_secs_f64();
        if per_second < self.quiet_bytes as f64 {
            self.trim();
        } else {
            self.pending = Some((now, buffered));
        }
    }

    fn trim(&mut self) {
        self.pending = None;
        let t = Instant::now();
        release_free();
        tracing::debug!(
            ms = t.elapsed().as_millis() as u64,
            "returned free memory to the system"
        );
    }

    #[cfg(test)]
    fn pending(&self) -> bool {
        self.pending.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trim_waits_for_writes_to_slow_down() {
        let start = Instant::now();
        let mut trim = TrimAfterCycle::new(1000);
        trim.cycle_done(start, 500);
        assert!(trim.pending());
        // Not before a second has passed, ...
        trim.tick(start + Duration::from_millis(500), 500);
        assert!(trim.pending());
        // ... not while the buffer grows by 1000 bytes a second or more, ...
        trim.tick(start + Duration::from_secs(1), 1_600);
        assert!(trim.pending());
        trim.tick(start + Duration::from_secs(3), 3_700);
        assert!(trim.pending(), "2100 bytes in 2 s is still 1050 a second");
        // ... and once it grows more slowly.
        trim.tick(start + Duration::from_secs(4), 4_600);
        assert!(!trim.pending());
        // A cycle that leaves the buffer empty trims at once.
        trim.cycle_done(start, 0);
        assert!(!trim.pending());
    }
}
