//! Buffers for large frames and byte strings.
//!
//! A multi-megabyte payload read into fresh memory pays one page fault per 4 KiB page, which
//! on Linux costs more than the copy itself (a 64 MiB frame: about 30 ms of faults against
//! 20 ms of reading). Fresh buffers of at least [`LARGE_BUFFER_BYTES`] are therefore advised to
//! use transparent huge pages where the system offers them on request; elsewhere the advice is
//! a no-op and the buffers are plain allocations.

use std::mem::MaybeUninit;

use bytes::BytesMut;

/// Buffers at least this large are advised to use huge pages.
pub const LARGE_BUFFER_BYTES: usize = 1 << 20;

/// An empty buffer with room for `capacity` bytes, advised to use huge pages if it is large.
pub fn buffer(capacity: usize) -> BytesMut {
    let mut buf = BytesMut::with_capacity(capacity);
    if capacity >= LARGE_BUFFER_BYTES {
        advise_large(buf.spare_capacity_mut());
    }
    buf
}

/// Advises the kernel that `region`, memory not yet written, is better backed by huge pages.
///
/// Only the whole pages inside `region` are advised; the advice changes no contents and is
/// ignored where unsupported (or where transparent huge pages are turned off).
pub fn advise_large(region: &mut [MaybeUninit<u8>]) {
    #[cfg(target_os = "linux")]
    linux::advise_huge_pages(region);
    #[cfg(not(target_os = "linux"))]
    let _ = region;
}

/// Makes the kernel back `region` (memory being filled by someone else meanwhile) with pages
/// now, from its end towards its start, until `stop` is set: the page faults (and the zeroing
/// of fresh pages they imply) then happen on this thread rather than on the one filling the
/// region from its start. Contents are never changed, so the region may be written to
/// concurrently. A no-op where unsupported (outside Linux, or before Linux 5.14).
///
/// # Safety
/// `region` must stay allocated until this returns.
pub unsafe fn populate_backwards(
    region: *mut u8,
    len: usize,
    stop: &std::sync::atomic::AtomicBool,
) {
    #[cfg(target_os = "linux")]
    // SAFETY: passed on from the caller.
    unsafe {
        linux::populate_backwards(region, len, stop)
    };
    #[cfg(not(target_os = "linux"))]
    let _ = (region, len, stop);
}

#[cfg(target_os = "linux")]
mod linux {
    use std::mem::MaybeUninit;

    /// Pages are at least this large on every Linux target; a larger page size only makes the
    /// advised range start and end on its own boundaries inside the one computed here, which
    /// the kernel rounds as it must.
    const PAGE: usize = 4096;

    pub(super) fn advise_huge_pages(region: &mut [MaybeUninit<u8>]) {
        let start = region.as_mut_ptr() as usize;
        let end = start + region.len();
        let (Some(first), last) = (start.checked_next_multiple_of(PAGE), end / PAGE * PAGE) else {
            return;
        };
        if last <= first {
            return;
        }
        // SAFETY: `[first, last)` lies inside `region`, which we borrow mutably, and is
        // page-aligned. MADV_HUGEPAGE changes only how the kernel backs those pages, never their
        // contents or their validity, so no memory safety rests on it; failure (EINVAL where
        // transparent huge pages are not built in) just leaves the advice unapplied.
        let rc = unsafe {
            libc::madvise(
                first as *mut libc::c_void,
                last - first,
                libc::MADV_HUGEPAGE,
            )
        };
        let _ = rc;
    }

    /// Populated at a time: small enough to stop soon after the filler catches up, large
    /// enough that the system calls cost nothing next to the zeroing.
    const POPULATE_STEP: usize = 4 << 20;

    pub(super) unsafe fn populate_backwards(
        region: *mut u8,
        len: usize,
        stop: &std::sync::atomic::AtomicBool,
    ) {
        let start = region as usize;
        let (Some(first), mut end) = (
            start.checked_next_multiple_of(PAGE),
            (start + len) / PAGE * PAGE,
        ) else {
            return;
        };
        while end > first && !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let from = end.saturating_sub(POPULATE_STEP).max(first);
            // SAFETY: `[from, end)` lies inside the region, which the caller keeps allocated,
            // and is page-aligned. MADV_POPULATE_WRITE faults pages in as a write would but
            // writes nothing, so it cannot race with the region's contents; it fails (EINVAL)
            // on kernels that lack it, and then we stop.
            let rc = unsafe {
                libc::madvise(
                    from as *mut libc::c_void,
                    end - from,
                    libc::MADV_POPULATE_WRITE,
                )
            };
            if rc != 0 {
                return;
            }
            end = from;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_and_small_buffers_hold_what_is_written() {
        for size in [0, 10, LARGE_BUFFER_BYTES, 3 * LARGE_BUFFER_BYTES + 17] {
            let mut buf = buffer(size);
            assert!(buf.capacity() >= size);
            buf.extend((0..size).map(|i| i as u8));
            assert!(buf.iter().enumerate().all(|(i, b)| *b == i as u8));
        }
    }

    #[test]
    fn advice_on_odd_regions_is_harmless() {
        let mut v: Vec<u8> = Vec::with_capacity(10_000);
        advise_large(&mut v.spare_capacity_mut()[1..9_000]);
        advise_large(&mut v.spare_capacity_mut()[..0]);
        v.extend_from_slice(&[1; 10_000]);
        assert!(v.iter().all(|b| *b == 1));
    }

    #[test]
    fn populating_while_another_thread_fills_changes_nothing() {
        use std::sync::atomic::AtomicBool;
        let size = (16 << 20) + 123;
        let mut buf = buffer(size);
        let region = buf.spare_capacity_mut();
        let (ptr, len) = (region.as_mut_ptr().cast::<u8>() as usize, region.len());
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            let populating = s.spawn(|| {
                // SAFETY: `buf` outlives the scope.
                unsafe { populate_backwards(ptr as *mut u8, len, &stop) }
            });
            buf.extend((0..size).map(|i| (i % 251) as u8));
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            populating.join().expect("no panic");
        });
        assert!(buf.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8));
        // Stopped before it starts: returns at once.
        let stop = AtomicBool::new(true);
        let mut other = buffer(1 << 20);
        let region = other.spare_capacity_mut();
        // SAFETY: `other` is alive.
        unsafe { populate_backwards(region.as_mut_ptr().cast(), region.len(), &stop) };
    }
}
