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
}
