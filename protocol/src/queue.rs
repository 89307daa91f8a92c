//! The outgoing bytes of a connection: encoded frames in one buffer, and the large byte strings
//! of those frames kept in their owners' memory, each to be written at its place between the
//! buffer's bytes.
//!
//! A frame encoded with [`codec::encode_frame_shared`](crate::codec::encode_frame_shared) (or
//! [`codec::encode_response_frame_sharing`](crate::codec::encode_response_frame_sharing)) leaves
//! its large byte strings out of the buffer and says where each belongs; a [`FrameQueue`] keeps
//! them in order and hands out the pieces to write (for a vectored write), so the byte stream is
//! exactly what copying them into the buffer would have made.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Buf, BytesMut};

/// Encoded frames not yet written, in order: a buffer, and byte strings written from their
/// owners' memory (`S`: [`bytes::Bytes`], or any owner of bytes), each after a given number of
/// the buffer's bytes.
///
/// Bytes are appended with [`buffer_mut`](Self::buffer_mut) (or
/// [`push_frame`](Self::push_frame)) and [`push_shared`](Self::push_shared); they are written
/// with [`pieces`](Self::pieces) and [`advance`](Self::advance) (a vectored write), or one piece
/// at a time with [`next_piece`](Self::next_piece) and [`advance_piece`](Self::advance_piece).
///
/// ```
/// use bytes::Bytes;
/// use rpyc_protocol::queue::FrameQueue;
///
/// let mut queue = FrameQueue::<Bytes>::new();
/// queue.buffer_mut().extend_from_slice(b"head");
/// queue.push_shared(4, Bytes::from_static(b"SHARED"));
/// queue.buffer_mut().extend_from_slice(b"tail");
///
/// let mut iov = [std::io::IoSlice::new(&[]); 4];
/// let n = queue.pieces(&mut iov);
/// let pieces: Vec<&[u8]> = iov[..n].iter().map(|s| &**s).collect();
/// assert_eq!(pieces, [&b"head"[..], b"SHARED", b"tail"]);
/// queue.advance(6); // a write that took "head" and "SH"
/// assert_eq!(queue.next_piece(), b"ARED");
/// assert_eq!(queue.len(), 8);
/// ```
pub struct FrameQueue<S> {
    /// Encoded bytes not yet written (the large byte strings left out).
    buf: BytesMut,
    /// Byte strings written from their owners' memory, in order: each goes out once `buf` has
    /// been written up to its position.
    shared: VecDeque<Shared<S>>,
    /// Bytes taken off the front of `buf` so far; the positions in `shared` count from the
    /// start of `buf` at the queue's creation.
    consumed: u64,
    /// Bytes of `shared` not yet written.
    shared_len: usize,
}

/// A byte string of a frame that stays in its owner's memory.
struct Shared<S> {
    /// Its position: right after this many bytes of `buf` (counted as `consumed` is).
    at: u64,
    bytes: S,
    /// How much of it is written.
    written: usize,
}

impl<S> Default for FrameQueue<S> {
    fn default() -> Self {
        FrameQueue {
            buf: BytesMut::new(),
            shared: VecDeque::new(),
            consumed: 0,
            shared_len: 0,
        }
    }
}

impl<S> std::fmt::Debug for FrameQueue<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameQueue")
            .field("buf", &self.buf.len())
            .field("shared", &self.shared.len())
            .field("shared_len", &self.shared_len)
            .finish()
    }
}

impl<S: AsRef<[u8]>> FrameQueue<S> {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty queue whose buffer has room for `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Self {
        FrameQueue {
            buf: BytesMut::with_capacity(capacity),
            ..Self::default()
        }
    }

    /// The buffer, to encode frames into. Bytes may only be appended to it: what is already
    /// there is queued.
    pub fn buffer_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// How many bytes the buffer holds now (the position a byte string pushed now would take).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The capacity of the buffer.
    pub fn buffer_capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Nothing left to write.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty() && self.shared.is_empty()
    }

    /// Bytes not yet written, shared ones included.
    pub fn len(&self) -> usize {
        self.buf.len() + self.shared_len
    }

    /// Whether any byte string is queued outside the buffer.
    pub fn has_shared(&self) -> bool {
        !self.shared.is_empty()
    }

    /// Queues `bytes`, to be written after the first `at` bytes now in the buffer (and after
    /// the byte strings queued before it). An empty byte string is dropped: there is nothing
    /// to write.
    ///
    /// `at` must not be past the end of the buffer, nor before the position of the byte string
    /// queued last; either would be a bug in the caller, and `at` is then moved within those
    /// bounds (a debug build panics).
    pub fn push_shared(&mut self, at: usize, bytes: S) {
        debug_assert!(
            at <= self.buf.len(),
            "shared bytes past the end of the buffer"
        );
        if bytes.as_ref().is_empty() {
            return;
        }
        let mut at = self.consumed + at.min(self.buf.len()) as u64;
        if let Some(last) = self.shared.back() {
            debug_assert!(at >= last.at, "shared bytes out of order");
            at = at.max(last.at);
        }
        self.shared_len += bytes.as_ref().len();
        self.shared.push_back(Shared {
            at,
            bytes,
            written: 0,
        });
    }

    /// Queues a frame encoded apart: `frame`'s bytes, with the byte strings `shared` left out
    /// of it, each at its position in `frame`. `frame` is left empty; when the queue is empty,
    /// its buffer is moved in rather than copied (and `frame` gets the queue's empty buffer).
    pub fn push_frame(
        &mut self,
        frame: &mut BytesMut,
        shared: impl IntoIterator<Item = (usize, S)>,
    ) {
        let base = self.buf.len();
        if base == 0 {
            std::mem::swap(&mut self.buf, frame);
        } else {
            self.buf.extend_from_slice(frame);
        }
        frame.clear();
        for (at, bytes) in shared {
            self.push_shared(base + at, bytes);
        }
    }

    /// What to write next: the buffer up to the next shared byte string, or that string; empty
    /// when everything is written.
    pub fn next_piece(&self) -> &[u8] {
        match self.shared.front() {
            Some(s) if s.at > self.consumed => &self.buf[..(s.at - self.consumed) as usize],
            Some(s) => &s.bytes.as_ref()[s.written..],
            None => &self.buf,
        }
    }

    /// The next pieces to write, in order, as many as fit in `iov`; returns how many. No piece
    /// is empty, so 0 means everything is written (or `iov` is empty).
    pub fn pieces<'a>(&'a self, iov: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        let mut pos = 0;
        for s in &self.shared {
            let at = (s.at - self.consumed) as usize;
            if at > pos {
                if n == iov.len() {
                    return n;
                }
                iov[n] = IoSlice::new(&self.buf[pos..at]);
                n += 1;
                pos = at;
            }
            if n == iov.len() {
                return n;
            }
            iov[n] = IoSlice::new(&s.bytes.as_ref()[s.written..]);
            n += 1;
        }
        if pos < self.buf.len() && n < iov.len() {
            iov[n] = IoSlice::new(&self.buf[pos..]);
            n += 1;
        }
        n
    }

    /// Marks `n` bytes of the [`pieces`](Self::pieces) as written (a count above
    /// [`len`](Self::len) is a bug: it marks everything written, and a debug build panics).
    pub fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let k = n.min(self.next_piece().len());
            debug_assert!(k > 0, "advanced past the end");
            if k == 0 {
                return;
            }
            self.advance_piece(k);
            n -= k;
        }
    }

    /// Marks `n` bytes of [`next_piece`](Self::next_piece) as written (at most its length).
    pub fn advance_piece(&mut self, n: usize) {
        match self.shared.front_mut() {
            Some(s) if s.at == self.consumed => {
                let n = n.min(s.bytes.as_ref().len() - s.written);
                s.written += n;
                self.shared_len -= n;
                if s.written == s.bytes.as_ref().len() {
                    self.shared.pop_front();
                }
            }
            _ => {
                let n = n.min(self.next_piece().len());
                self.buf.advance(n);
                self.consumed += n as u64;
            }
        }
    }

    /// Drops everything unwritten (the buffer's memory too).
    pub fn clear(&mut self) {
        self.buf = BytesMut::new();
        self.shared.clear();
        self.shared_len = 0;
    }

    /// When nothing is queued, drops a buffer whose capacity is above `keep_bytes`, so that
    /// one large frame does not keep its memory for the life of the connection.
    pub fn trim(&mut self, keep_bytes: usize) {
        if self.is_empty() && self.buf.capacity() > keep_bytes {
            self.buf = BytesMut::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    /// Queues `frames` (buffer bytes and shared strings, in order) and returns the stream they
    /// make.
    fn queue_of(items: &[(&[u8], bool)]) -> (FrameQueue<Bytes>, Vec<u8>) {
        let mut queue = FrameQueue::new();
        let mut stream = Vec::new();
        for &(bytes, shared) in items {
            if shared {
                let at = queue.buffered();
                queue.push_shared(at, Bytes::copy_from_slice(bytes));
            } else {
                queue.buffer_mut().extend_from_slice(bytes);
            }
            stream.extend_from_slice(bytes);
        }
        (queue, stream)
    }

    fn pieces_of(queue: &FrameQueue<Bytes>, room: usize) -> Vec<Vec<u8>> {
        let mut iov = vec![IoSlice::new(&[]); room];
        let n = queue.pieces(&mut iov);
        iov[..n].iter().map(|s| s.to_vec()).collect()
    }

    const MIX: &[(&[u8], bool)] = &[
        (b"aaaa", false),
        (b"SHARED-1", true),
        (b"bb", false),
        (b"SHARED-2", true),
        (b"SHARED-3", true), // two in a row
        (b"", true),         // an empty one
        (b"cccccc", false),
        (b"SHARED-4", true), // at the very end
    ];

    #[test]
    fn pieces_alternate_between_buffer_and_shared_bytes() {
        let (queue, stream) = queue_of(MIX);
        assert_eq!(queue.len(), stream.len());
        let pieces = pieces_of(&queue, 16);
        assert_eq!(
            pieces,
            [
                &b"aaaa"[..],
                b"SHARED-1",
                b"bb",
                b"SHARED-2",
                b"SHARED-3",
                b"cccccc",
                b"SHARED-4"
            ]
        );
        // Fewer slots: the first pieces only.
        assert_eq!(pieces_of(&queue, 3), pieces[..3]);
        assert!(pieces_of(&queue, 0).is_empty());
    }

    /// Writes the queue out with writes of at most `step` bytes into `room` slots, and returns
    /// what was written.
    fn drain(mut queue: FrameQueue<Bytes>, step: usize, room: usize) -> Vec<u8> {
        let total = queue.len();
        let mut out = Vec::new();
        loop {
            let pieces = pieces_of(&queue, room);
            if pieces.is_empty() {
                break;
            }
            assert!(pieces.iter().all(|p| !p.is_empty()), "no empty pieces");
            let all = pieces.concat();
            let n = all.len().min(step);
            out.extend_from_slice(&all[..n]);
            queue.advance(n);
            assert_eq!(queue.len() + out.len(), total, "len counts what is left");
        }
        assert!(queue.is_empty());
        assert!(!queue.has_shared());
        out
    }

    #[test]
    fn partial_writes_across_piece_boundaries_keep_the_stream() {
        let (_, stream) = queue_of(MIX);
        for step in 1..=stream.len() {
            for room in 1..=8 {
                let (queue, _) = queue_of(MIX);
                assert_eq!(drain(queue, step, room), stream, "step {step}, room {room}");
            }
        }
    }

    #[test]
    fn one_piece_at_a_time() {
        let (mut queue, stream) = queue_of(MIX);
        let mut out = Vec::new();
        loop {
            let piece = queue.next_piece();
            if piece.is_empty() {
                break;
            }
            // Half of it (at least a byte), then the rest.
            let half = piece.len().div_ceil(2);
            out.extend_from_slice(&piece[..half]);
            queue.advance_piece(half);
        }
        assert_eq!(out, stream);
        assert!(queue.is_empty());
    }

    #[test]
    fn bytes_appended_while_writing_go_after() {
        let (mut queue, mut stream) = queue_of(&[(b"one", false), (b"TWO", true), (b"3", false)]);
        let mut out = Vec::new();
        // Write part of the shared string, then queue more.
        let first = pieces_of(&queue, 8).concat();
        out.extend_from_slice(&first[..5]);
        queue.advance(5);
        queue.buffer_mut().extend_from_slice(b"four");
        let at = queue.buffered();
        queue.push_shared(at, Bytes::from_static(b"FIVE"));
        let mut frame = BytesMut::from(&b"six+SEVEN"[..]);
        queue.push_frame(&mut frame, [(4, Bytes::from_static(b"eight"))]);
        assert!(frame.is_empty());
        stream.extend_from_slice(b"fourFIVEsix+eightSEVEN");
        out.extend(drain(queue, 3, 2));
        assert_eq!(out, stream);
    }

    #[test]
    fn a_frame_pushed_into_an_empty_queue_is_moved() {
        let mut queue = FrameQueue::<Bytes>::new();
        let mut frame = BytesMut::with_capacity(100);
        frame.extend_from_slice(b"abcSHARED");
        let ptr = frame.as_ptr();
        frame.truncate(3);
        queue.push_frame(&mut frame, [(3, Bytes::from_static(b"shared"))]);
        assert_eq!(queue.next_piece().as_ptr(), ptr, "not copied");
        assert_eq!(
            pieces_of(&queue, 4),
            [&b"abc"[..], b"shared"],
            "the position counts from the frame's start"
        );
        // Written to the end, then a frame again: positions count from the new start.
        queue.advance(9);
        assert!(queue.is_empty());
        let mut frame = BytesMut::from(&b"xy"[..]);
        queue.push_frame(
            &mut frame,
            [(0, Bytes::from_static(b"S")), (2, Bytes::from_static(b"T"))],
        );
        assert_eq!(pieces_of(&queue, 4), [&b"S"[..], b"xy", b"T"]);
    }

    #[test]
    fn clear_and_trim() {
        let (mut queue, _) = queue_of(MIX);
        let weak = Bytes::from(vec![1u8; 10]);
        queue.push_shared(queue.buffered(), weak.clone());
        assert!(!weak.is_unique());
        // Not empty: trim keeps everything.
        queue.trim(0);
        assert!(queue.has_shared() && !queue.is_empty());
        queue.clear();
        assert!(queue.is_empty());
        assert_eq!(queue.len(), 0);
        assert!(weak.is_unique(), "the shared bytes are dropped");
        assert_eq!(queue.next_piece(), b"");

        let mut queue = FrameQueue::<Bytes>::with_capacity(1 << 20);
        queue.trim(1 << 21);
        assert!(queue.buffer_capacity() >= 1 << 20, "small enough to keep");
        queue.trim(1024);
        assert_eq!(queue.buffer_capacity(), 0);
    }

    #[test]
    fn advancing_past_the_end_stops_there() {
        let (mut queue, stream) = queue_of(MIX);
        let advance = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            queue.advance(stream.len() + 5);
        }));
        // Debug builds assert; either way nothing is left.
        assert_eq!(advance.is_err(), cfg!(debug_assertions));
        assert!(queue.is_empty());
    }

    #[test]
    fn any_owner_of_bytes_will_do() {
        let mut queue = FrameQueue::<Vec<u8>>::new();
        queue.buffer_mut().extend_from_slice(b"<");
        queue.push_shared(1, vec![b'x'; 3]);
        queue.buffer_mut().extend_from_slice(b">");
        let mut iov = [IoSlice::new(&[]); 4];
        let n = queue.pieces(&mut iov);
        let all: Vec<u8> = iov[..n].iter().flat_map(|s| s.iter().copied()).collect();
        assert_eq!(all, b"<xxx>");
    }
}
