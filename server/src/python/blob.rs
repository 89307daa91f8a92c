//! A blob frame's blobs as Python `bytes` objects: the connection's reader reads each blob
//! straight into the object the call will get, so an upload is neither buffered twice nor
//! copied (see `rpyc_protocol::codec::read_blobs`).

use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use pyo3::ffi;
use pyo3::prelude::*;

use super::convert::PyBytesView;

/// `bytes` objects allocated for a blob frame's blobs, not filled yet. Nothing but this value
/// refers to them, so their contents may be written.
pub struct BlobBuffers {
    views: Vec<Arc<PyBytesView>>,
}

/// A request's blobs, filled: each is the `bytes` object that the `Value::Bytes` sharing its
/// memory stands for: the call gets the object itself.
#[derive(Default)]
pub struct Blobs(Vec<Arc<PyBytesView>>);

impl BlobBuffers {
    /// Allocates one `bytes` object per length, uninitialised (and, if large, advised onto huge
    /// pages). Takes the GIL, on a blocking thread rather than the caller's.
    ///
    /// # Errors
    /// Python's error (a `MemoryError`), as text.
    pub async fn allocate(lens: Vec<usize>) -> Result<BlobBuffers, String> {
        tokio::task::spawn_blocking(move || Python::attach(|py| Self::allocate_now(py, &lens)))
            .await
            .map_err(|e| format!("blob allocation failed: {e}"))?
    }

    fn allocate_now(py: Python<'_>, lens: &[usize]) -> Result<BlobBuffers, String> {
        let mut views = Vec::with_capacity(lens.len());
        for &len in lens {
            let size = ffi::Py_ssize_t::try_from(len)
                .map_err(|_| format!("a blob of {len} bytes is too long for Python"))?;
            // SAFETY: with a null source, PyBytes_FromStringAndSize returns a new reference to
            // a `bytes` object of `size` uninitialised bytes, or null with an exception set
            // (which `from_owned_ptr_or_err` turns into an error). Its buffer, `len` bytes at
            // PyBytes_AsString, stays where it is for as long as the object lives; the view
            // keeps a reference, and no Python code sees the object before it is filled.
            let view = unsafe {
                let obj = Bound::from_owned_ptr_or_err(
                    py,
                    ffi::PyBytes_FromStringAndSize(std::ptr::null(), size),
                )
                .map_err(|e| format!("cannot allocate a blob of {len} bytes: {e}"))?;
                let data = ffi::PyBytes_AsString(obj.as_ptr()).cast::<u8>();
                rpyc_protocol::memory::advise_large(std::slice::from_raw_parts_mut(
                    data.cast::<MaybeUninit<u8>>(),
                    len,
                ));
                PyBytesView {
                    owner: obj.into_any().unbind(),
                    data,
                    len,
                }
            };
            views.push(Arc::new(view));
        }
        Ok(BlobBuffers { views })
    }

    /// Has the kernel back the buffers with memory from their end backwards, on a blocking
    /// thread, while the caller fills them from the start (see
    /// `rpyc_protocol::memory::populate_backwards`): on a machine with a spare core, the
    /// zeroing of fresh pages then leaves the reader's path. Worth it only for large blobs.
    pub fn populate_in_background(&self) -> Populating {
        let stop = Arc::new(AtomicBool::new(false));
        let views = self.views.clone();
        let handle = tokio::task::spawn_blocking({
            let stop = Arc::clone(&stop);
            move || {
                for view in views.iter().rev() {
                    // SAFETY: `views` keeps every object, and so its buffer, alive until this
                    // returns.
                    unsafe {
                        rpyc_protocol::memory::populate_backwards(
                            view.data.cast_mut(),
                            view.len,
                            &stop,
                        );
                    }
                }
            }
        });
        Populating { stop, handle }
    }

    /// The objects' buffers, to read the blobs into.
    pub fn buffers(&mut self) -> Vec<&mut [MaybeUninit<u8>]> {
        self.views
            .iter_mut()
            .map(|view| {
                // SAFETY: the buffer of `len` bytes belongs to an object only this value refers
                // to (see the type's invariant), borrowed mutably with `self`.
                unsafe {
                    std::slice::from_raw_parts_mut(
                        view.data.cast_mut().cast::<MaybeUninit<u8>>(),
                        view.len,
                    )
                }
            })
            .collect()
    }

    /// Once every buffer is filled: the blobs as `Bytes` sharing the objects' memory, in order,
    /// and the [`Blobs`] that map them back to the objects.
    ///
    /// # Safety
    /// Every buffer of [`buffers`](Self::buffers) must have been written in full.
    pub unsafe fn filled(self) -> (Vec<Bytes>, Blobs) {
        let views = self.views;
        let bytes = views
            .iter()
            .map(|view| Bytes::from_owner(SharedView(Arc::clone(view))))
            .collect();
        (bytes, Blobs(views))
    }
}

impl std::fmt::Debug for BlobBuffers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let lens: Vec<usize> = self.views.iter().map(|view| view.len).collect();
        f.debug_struct("BlobBuffers").field("lens", &lens).finish()
    }
}

impl std::fmt::Debug for Blobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let lens: Vec<usize> = self.0.iter().map(|view| view.len).collect();
        f.debug_tuple("Blobs").field(&lens).finish()
    }
}

/// See [`BlobBuffers::populate_in_background`]; stops it when dropped.
#[derive(Debug)]
pub struct Populating {
    stop: Arc<AtomicBool>,
    handle: tokio::task::JoinHandle<()>,
}

impl Populating {
    /// Stops populating and waits until the thread has let go of the buffers' memory.
    pub async fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = (&mut self.handle).await;
    }
}

impl Drop for Populating {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A blob's `bytes` object as the owner of a `Bytes`.
struct SharedView(Arc<PyBytesView>);

impl AsRef<[u8]> for SharedView {
    fn as_ref(&self) -> &[u8] {
        self.0.as_ref().as_ref()
    }
}

thread_local! {
    /// The blobs of the request being run on this thread.
    static CURRENT: RefCell<Vec<Arc<PyBytesView>>> = const { RefCell::new(Vec::new()) };
}

impl Blobs {
    /// Makes these the blobs of the request run on this thread, for as long as the scope lives.
    pub(super) fn scope(&self) -> BlobScope {
        CURRENT.with(|current| *current.borrow_mut() = self.0.clone());
        BlobScope(())
    }
}

/// See [`Blobs::scope`].
pub(super) struct BlobScope(());

impl Drop for BlobScope {
    fn drop(&mut self) {
        CURRENT.with(|current| current.borrow_mut().clear());
    }
}

/// The `bytes` object of the current request's blob that `bytes` shares the memory of, if any:
/// the call gets that object itself rather than a copy.
pub(super) fn object_for<'py>(py: Python<'py>, bytes: &[u8]) -> Option<Bound<'py, PyAny>> {
    if bytes.len() < rpyc_protocol::codec::BLOB_MIN_BYTES {
        return None;
    }
    CURRENT.with(|current| {
        current
            .borrow()
            .iter()
            .find(|view| view.is(bytes))
            .map(|view| view.owner.bind(py).clone())
    })
}
