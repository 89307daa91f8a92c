//! The write side of a connection: frames are written by whichever thread produces them.
//!
//! On plain TCP a reply is encoded and written straight to the socket by the Python worker
//! thread, and a pong by the reader task, with a non-blocking `try_write`: no hand-off to
//! another thread on the hot path (each one costs several microseconds on a small call). Only
//! when the socket would block (a slow reader, or a reply larger than the socket buffer) does
//! the rest wait in the outbox for the writer task, which flushes it as the socket drains. Every
//! write happens under the outbox lock, so frames never interleave and keep their order.
//!
//! Over TLS the record layer needs an async writer, so frames are queued and the writer task
//! writes them: one hand-off per batch of frames.
//!
//! A large `bytes` result is not copied into the buffer: the frame's bytes around it are, and
//! the outbox keeps a reference to the object's own buffer and writes it in between
//! ([`Outbox::send_with`]).

use std::io;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::BytesMut;
use rpyc_protocol::queue::FrameQueue;
use rpyc_protocol::{Message, ProtocolError, ServerError, codec};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::Notify;
use tracing::{debug, warn};

use crate::python::{ReplySink, SharedBytes, SharedList};

/// Buffers above this size are dropped rather than kept for the next frame.
const KEEP_BUFFER_BYTES: usize = 1 << 20;
/// How long the final flush may take when the connection closes.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Where frames go.
enum Sink {
    /// Plain TCP: any thread may write with `try_write`.
    Tcp(OwnedWriteHalf),
    /// Any async writer (TLS): only the writer task writes.
    Stream(tokio::sync::Mutex<Box<dyn AsyncWrite + Send + Unpin>>),
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Sink::Tcp(_) => "Sink::Tcp",
            Sink::Stream(_) => "Sink::Stream",
        })
    }
}

struct State {
    /// Encoded frames not yet written, with the byte strings sent from their owners' memory.
    queue: FrameQueue<Piece>,
    /// The writer task owns flushing until everything is written (the socket would block, or
    /// the sink is a stream).
    parked: bool,
    /// Writing failed or the connection is closing: frames are dropped.
    closed: bool,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("queue", &self.queue)
            .field("parked", &self.parked)
            .field("closed", &self.closed)
            .finish()
    }
}

/// A byte string of a frame that stays in its owner's memory.
struct Piece(SharedBytes);

impl AsRef<[u8]> for Piece {
    fn as_ref(&self) -> &[u8] {
        (*self.0).as_ref()
    }
}

/// Ordered writer of a connection's frames, synchronous on plain TCP.
#[derive(Debug)]
pub(crate) struct Outbox {
    sink: Sink,
    state: Mutex<State>,
    /// Wakes the writer task when frames are left over, and the reader when the backlog drains.
    parked: Notify,
    drained: Notify,
    max_frame_bytes: usize,
    /// Above this backlog the reader stops taking new requests (a client that does not read its
    /// replies cannot make the server buffer without bound).
    high_water: usize,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Outbox {
    /// An outbox that writes to a TCP socket directly.
    pub(crate) fn tcp(half: OwnedWriteHalf, max_frame_bytes: usize) -> Outbox {
        Outbox::new(Sink::Tcp(half), max_frame_bytes)
    }

    /// An outbox whose writer task writes to any async writer.
    pub(crate) fn stream(
        writer: Box<dyn AsyncWrite + Send + Unpin>,
        max_frame_bytes: usize,
    ) -> Outbox {
        Outbox::new(
            Sink::Stream(tokio::sync::Mutex::new(writer)),
            max_frame_bytes,
        )
    }

    fn new(sink: Sink, max_frame_bytes: usize) -> Outbox {
        Outbox {
            sink,
            state: Mutex::new(State {
                queue: FrameQueue::with_capacity(8 * 1024),
                parked: false,
                closed: false,
            }),
            parked: Notify::new(),
            drained: Notify::new(),
            max_frame_bytes,
            high_water: max_frame_bytes.saturating_mul(2).max(64 << 20),
        }
    }

    /// Encodes and writes a message now, or leaves it for the writer task if the socket would
    /// block. Never blocks. A response too large for a frame becomes a "result too large" error
    /// for that request.
    pub(crate) fn send(&self, message: &Message) {
        self.send_with(|buf, _, max| encode(message, max, buf));
    }

    /// Encodes frames in place and writes them now, or leaves them for the writer task if the
    /// socket would block. `encode` gets the outgoing buffer, a list for byte strings it wants
    /// sent from their owners' memory rather than copied (each with its position in the buffer:
    /// it goes out right after the bytes before that position), and the frame limit. It must
    /// append whole frames only, leaving both as they were if it fails; it runs under the
    /// outbox lock, so frames keep their order. Not called once the connection is closed.
    pub(crate) fn send_with(&self, encode: impl FnOnce(&mut BytesMut, &mut SharedList, usize)) {
        self.append_with(encode, true);
    }

    /// Encodes frames in place like [`send_with`](Self::send_with), but leaves them for the
    /// writer task, which writes everything queued by then with one system call: for replies
    /// with more requests of the connection queued behind them (pipelining), where a write
    /// each costs more than the wake-up of the writer once per batch.
    pub(crate) fn send_later_with(
        &self,
        encode: impl FnOnce(&mut BytesMut, &mut SharedList, usize),
    ) {
        self.append_with(encode, false);
    }

    /// Appends frames encoded in place, then writes them now or wakes the writer task.
    fn append_with(&self, encode: impl FnOnce(&mut BytesMut, &mut SharedList, usize), now: bool) {
        let mut state = lock(&self.state);
        if state.closed {
            return;
        }
        let mut shared = Vec::new();
        encode(state.queue.buffer_mut(), &mut shared, self.max_frame_bytes);
        for (at, bytes) in shared {
            state.queue.push_shared(at, Piece(bytes));
        }
        if state.parked {
            // The writer task is on its way and writes these too.
        } else if now {
            self.flush(&mut state);
        } else if !state.queue.is_empty() {
            state.parked = true;
            self.parked.notify_one();
        }
    }

    /// Writes an already encoded frame now (or leaves it for the writer task), like
    /// [`send`](Self::send); stock-RPyC connections encode their own frames (issue 6).
    pub(crate) fn send_frame(&self, frame: &[u8]) {
        let mut state = lock(&self.state);
        if state.closed {
            return;
        }
        state.queue.buffer_mut().extend_from_slice(frame);
        if !state.parked {
            self.flush(&mut state);
        }
    }

    /// Writes as much of the backlog as the socket takes without blocking (TCP), or hands it
    /// to the writer task (stream).
    fn flush(&self, state: &mut State) {
        let Sink::Tcp(half) = &self.sink else {
            if !state.queue.is_empty() && !state.parked {
                state.parked = true;
                self.parked.notify_one();
            }
            return;
        };
        loop {
            let mut iov = [io::IoSlice::new(&[]); 8];
            let pieces = state.queue.pieces(&mut iov);
            if pieces == 0 {
                break;
            }
            match half.try_write_vectored(&iov[..pieces]) {
                Ok(0) => {
                    state.closed = true;
                    break;
                }
                Ok(n) => state.queue.advance(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !state.parked {
                        state.parked = true;
                        self.parked.notify_one();
                    }
                    return;
                }
                Err(e) => {
                    debug!(error = %e, "writing to the client failed");
                    state.closed = true;
                    break;
                }
            }
        }
        if state.closed {
            state.queue.clear();
        } else {
            state.queue.trim(KEEP_BUFFER_BYTES);
        }
        state.parked = false;
        self.drained.notify_waiters();
    }

    /// Bytes encoded and not yet written.
    pub(crate) fn backlog(&self) -> usize {
        lock(&self.state).queue.len()
    }

    /// The backlog above which no new request should start.
    pub(crate) fn high_water(&self) -> usize {
        self.high_water
    }

    /// Waits until the backlog is below the high-water mark (returns at once normally).
    pub(crate) async fn wait_for_room(&self) {
        loop {
            let drained = self.drained.notified();
            {
                let state = lock(&self.state);
                if state.closed || state.queue.len() < self.high_water {
                    return;
                }
            }
            drained.await;
        }
    }

    /// The writer task: flushes backlogs as the socket drains, until `stop`; then a last
    /// bounded flush, and the write side is shut down.
    pub(crate) async fn run(&self, stop: tokio_util::sync::CancellationToken) {
        loop {
            tokio::select! {
                () = self.parked.notified() => {}
                () = stop.cancelled() => break,
            }
            if !self.drain().await {
                break;
            }
        }
        if tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, self.drain())
            .await
            .is_err()
        {
            warn!("client did not read its last replies in time");
        }
        self.close().await;
    }

    /// Flushes until the backlog is empty; false if the socket failed.
    async fn drain(&self) -> bool {
        // Over a stream, the frames being written, taken out of the state (swapped with an
        // empty queue, so both buffers are reused).
        let mut chunk = FrameQueue::new();
        match &self.sink {
            Sink::Tcp(half) => loop {
                {
                    let mut state = lock(&self.state);
                    if state.closed {
                        return false;
                    }
                    if state.queue.is_empty() {
                        state.parked = false;
                        return true;
                    }
                    state.parked = false;
                    self.flush(&mut state);
                    if !state.parked {
                        continue;
                    }
                }
                if let Err(e) = half.writable().await {
                    debug!(error = %e, "socket no longer writable");
                    lock(&self.state).closed = true;
                    return false;
                }
            },
            Sink::Stream(writer) => loop {
                {
                    let mut state = lock(&self.state);
                    if state.closed {
                        return false;
                    }
                    if state.queue.is_empty() {
                        state.parked = false;
                        drop(state);
                        self.drained.notify_waiters();
                        return true;
                    }
                    std::mem::swap(&mut state.queue, &mut chunk);
                }
                let mut writer = writer.lock().await;
                let written = async {
                    loop {
                        let piece = chunk.next_piece();
                        if piece.is_empty() {
                            break;
                        }
                        writer.write_all(piece).await?;
                        let n = piece.len();
                        chunk.advance_piece(n);
                    }
                    writer.flush().await
                };
                if let Err(e) = written.await {
                    debug!(error = %e, "writing to the client failed");
                    lock(&self.state).closed = true;
                    return false;
                }
                chunk.trim(KEEP_BUFFER_BYTES);
            },
        }
    }

    /// Stops accepting frames and shuts the write side down, so the client sees the end at once
    /// even while the Python thread still holds the outbox (a call stuck in C code).
    async fn close(&self) {
        {
            let mut state = lock(&self.state);
            state.closed = true;
            state.queue.clear();
        }
        self.drained.notify_waiters();
        let result = match &self.sink {
            Sink::Tcp(half) => {
                socket2::SockRef::from(half.as_ref()).shutdown(std::net::Shutdown::Write)
            }
            Sink::Stream(writer) => {
                match tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, async {
                    writer.lock().await.shutdown().await
                })
                .await
                {
                    Ok(result) => result,
                    Err(_) => Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "shutdown timed out",
                    )),
                }
            }
        };
        if let Err(e) = result {
            debug!(error = %e, "shutting down the connection's write side failed");
        }
    }
}

/// The Python worker writes its replies straight into the outbox.
impl ReplySink for Outbox {
    fn has_room(&self) -> bool {
        let state = lock(&self.state);
        state.closed || state.queue.len() < self.high_water
    }

    fn send(&self, message: &Message) {
        Outbox::send(self, message);
    }

    fn send_with(&self, encode: &mut dyn FnMut(&mut BytesMut, &mut SharedList, usize)) {
        Outbox::send_with(self, encode);
    }

    fn send_with_more_queued(&self, encode: &mut dyn FnMut(&mut BytesMut, &mut SharedList, usize)) {
        Outbox::send_later_with(self, encode);
    }
}

/// Appends one frame; a response that does not fit in a frame is replaced by a refusal.
fn encode(message: &Message, max_frame_bytes: usize, buf: &mut BytesMut) {
    match codec::encode_frame(message, max_frame_bytes, buf) {
        Ok(()) => {}
        Err(ProtocolError::TooLarge { size, max }) => {
            if let Message::Response { id, .. } = message {
                warn!(request = id.0, size, max, "result too large to send");
                let refusal = Message::Response {
                    id: *id,
                    result: Err(ServerError::ResultTooLarge {
                        size: size as u64,
                        max: max as u64,
                    }),
                };
                if let Err(e) = codec::encode_frame(&refusal, max_frame_bytes, buf) {
                    warn!(error = %e, "cannot encode a refusal");
                }
            } else {
                warn!(size, max, "message too large to send");
            }
        }
        Err(e) => warn!(error = %e, "cannot encode a message"),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::io::AsyncReadExt;
    use tokio_util::sync::CancellationToken;

    use super::*;

    /// Sends a mix of frames, some with shared byte strings (large enough that the socket
    /// blocks and the writer task takes over), and returns the byte stream they must make.
    fn send_mix(outbox: &Outbox) -> Vec<u8> {
        let mut expected = Vec::new();
        let mut sent = |header: &[u8], shared: &[Vec<u8>], trailer: &[u8]| {
            outbox.send_with(|buf, out, _| {
                buf.extend_from_slice(header);
                for (i, s) in shared.iter().enumerate() {
                    out.push((buf.len(), Box::new(s.clone()) as SharedBytes));
                    buf.extend_from_slice(&[i as u8; 3]);
                }
                buf.extend_from_slice(trailer);
            });
            expected.extend_from_slice(header);
            for (i, s) in shared.iter().enumerate() {
                expected.extend_from_slice(s);
                expected.extend_from_slice(&[i as u8; 3]);
            }
            expected.extend_from_slice(trailer);
        };
        let big = |n: usize, seed: u8| {
            (0..n)
                .map(|i| (i as u8).wrapping_mul(seed))
                .collect::<Vec<_>>()
        };
        sent(b"small", &[], b"");
        sent(b"head", &[big(2 << 20, 3)], b"tail");
        sent(b"", &[big(70_000, 5), big(100_000, 7)], b"end");
        sent(b"after", &[], b"!");
        sent(b"x", &[big(1 << 20, 11)], b"");
        for i in 0..50u8 {
            let shared = if i % 7 == 0 {
                vec![big(65_536 + usize::from(i), i)]
            } else {
                vec![]
            };
            sent(&[i; 5], &shared, &[i; 2]);
        }
        expected
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tcp_frames_with_shared_bytes_arrive_in_order() -> anyhow::Result<()> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let client = tokio::net::TcpStream::connect(listener.local_addr()?).await?;
        let (server, _) = listener.accept().await?;
        // A small send buffer: writes end part-way through pieces, often.
        socket2::SockRef::from(&server).set_send_buffer_size(16 * 1024)?;
        let (_read, write) = server.into_split();
        let outbox = Arc::new(Outbox::tcp(write, 1 << 30));
        check_order(outbox, client).await
    }

    #[tokio::test]
    async fn stream_frames_with_shared_bytes_arrive_in_order() -> anyhow::Result<()> {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let outbox = Arc::new(Outbox::stream(Box::new(server), 1 << 30));
        check_order(outbox, client).await
    }

    /// Sends the mix through `outbox` while `client` reads, and compares the bytes.
    async fn check_order(
        outbox: Arc<Outbox>,
        mut client: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    ) -> anyhow::Result<()> {
        let stop = CancellationToken::new();
        let writer = tokio::spawn({
            let outbox = Arc::clone(&outbox);
            let stop = stop.clone();
            async move { outbox.run(stop).await }
        });
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.map(|_| got)
        });
        let expected = send_mix(&outbox);
        stop.cancel();
        writer.await?;
        let got = reader.await??;
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "the stream differs");
        Ok(())
    }
}
