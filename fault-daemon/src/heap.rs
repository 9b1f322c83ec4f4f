//! Giving freed heap memory back to the kernel.
//!
//! glibc keeps what it freed for reuse: only free memory at the very top of its main heap
//! goes back by itself. A large answer (ListFaults or GetStats with 100 000 faults builds
//! some 100 000 small strings and a 10 MB message) or a `clear` of many faults leaves
//! megabytes of free chunks between live ones, which stayed resident: at 100 000 faults,
//! one ListFaults raised faultd's RSS from 47 to 56 MB for good. `malloc_trim` hands every
//! whole free page back (`madvise`), in the middle of the heaps too. [`spawn_trimmer`]
//! checks now and then how much the heaps hold free and trims when it is worth it.
//!
//! Under churn the same happens slowly: in the soak, glibc's second arena had 3.4 MB
//! mapped and 0.5 MB in use (`malloc_stats`, through gdb), its mapped size constant over
//! minutes, while its resident pages grew by some 40 KiB a minute as allocations wandered
//! through the free space: RSS grew for as long as the soak ran, below the 4 MiB at which
//! the trimmer first acted. Hence 1 MiB.

use std::time::Duration;

/// How often the free heap is looked at: cheap (mallinfo2 walks the free lists). Every
/// second: at 2 s, a ListFaults of 100 000 faults was once still resident 3 s after its
/// answer (RSS 60 MB against 48.5 MB in the next run), its buffers freed after a check.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Free heap worth trimming (a trim of a 50 MB heap costs well under a millisecond);
/// below, the next requests reuse it anyway.
pub const TRIM_ABOVE: usize = 1 << 20;

/// Bytes the heaps hold free (all arenas), if the allocator tells.
pub fn free_bytes() -> Option<usize> {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: mallinfo2 only reads the allocator's statistics.
        let info = unsafe { libc::mallinfo2() };
        Some(info.fordblks)
    }
    #[cfg(not(target_env = "gnu"))]
    None
}

/// Hands the heaps' free pages back to the kernel.
pub fn trim() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Trims when more than `above` bytes are free; returns whether it did.
pub fn trim_if_above(above: usize) -> bool {
    match free_bytes() {
        Some(free) if free > above => {
            trim();
            true
        }
        _ => false,
    }
}

/// Checks every [`CHECK_EVERY`] on a blocking thread (a trim of a large heap can take a
/// millisecond); ends with the runtime.
pub fn spawn_trimmer() {
    tokio::spawn(async {
        let mut every = tokio::time::interval(CHECK_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            if tokio::task::spawn_blocking(|| trim_if_above(TRIM_ABOVE))
                .await
                .is_err()
            {
                return;
            }
        }
    });
}

#[cfg(all(test, target_env = "gnu"))]
mod tests {
    use super::*;

    /// Resident pages of `[start, end)`, as the kernel counts them (mincore).
    fn resident_pages(start: usize, end: usize) -> usize {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let start = start / page * page;
        let pages = (end - start).div_ceil(page);
        let mut resident = vec![0u8; pages];
        // SAFETY: the range lies in this process's heap, mapped for as long as the test
        // holds a live chunk above it; the vector has one byte per page.
        let rc = unsafe { libc::mincore(start as *mut _, pages * page, resident.as_mut_ptr()) };
        assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
        resident.iter().filter(|&&r| r & 1 == 1).count()
    }

    /// Many small chunks freed between live ones stay resident (what a large answer leaves
    /// behind among faults added meanwhile); a trim hands their pages back. Counted on the
    /// chunks' own pages, so other tests' allocations do not blur it.
    #[test]
    fn freed_small_chunks_go_back_to_the_kernel_when_trimmed() {
        let mut small: Vec<Option<Box<[u8; 100]>>> = (0..200_000)
            .map(|i| Some(Box::new([i as u8; 100])))
            .collect();
        let addresses = small.iter().flatten().map(|b| b.as_ptr() as usize);
        let (start, end) = addresses.fold((usize::MAX, 0), |(lo, hi), a| (lo.min(a), hi.max(a)));
        // One in a thousand stays: the free runs between them cannot go back by themselves.
        for (i, chunk) in small.iter_mut().enumerate() {
            if i % 1000 != 0 {
                *chunk = None;
            }
        }
        let free = free_bytes().unwrap();
        assert!(
            free > TRIM_ABOVE,
            "only {free} bytes free after freeing 20 MB"
        );
        let before = resident_pages(start, end);
        assert!(trim_if_above(TRIM_ABOVE));
        let after = resident_pages(start, end);
        assert!(
            after * 4 < before,
            "{before} → {after} resident pages: the freed chunks stayed resident"
        );
        assert!(!trim_if_above(usize::MAX));
        drop(small);
    }
}
