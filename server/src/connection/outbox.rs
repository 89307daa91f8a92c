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

use std::io;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use rpyc_protocol::{Message, ProtocolError, ServerError, codec};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::Notify;
use tracing::{debug, warn};

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

#[derive(Debug)]
struct State {
    /// Encoded frames not yet written.
    buf: BytesMut,
    /// The writer task owns flushing until `buf` is empty (the socket would block, or the
    /// sink is a stream).
    parked: bool,
    /// Writing failed or the connection is closing: frames are dropped.
    closed: bool,
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
                buf: BytesMut::with_capacity(8 * 1024),
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
        let mut state = lock(&self.state);
        if state.closed {
            return;
        }
        encode(message, self.max_frame_bytes, &mut state.buf);
        if !state.parked {
            self.flush(&mut state);
        }
    }

    /// Writes as much of the backlog as the socket takes without blocking (TCP), or hands it
    /// to the writer task (stream).
    fn flush(&self, state: &mut State) {
        let Sink::Tcp(half) = &self.sink else {
            if !state.buf.is_empty() && !state.parked {
                state.parked = true;
                self.parked.notify_one();
            }
            return;
        };
        while !state.buf.is_empty() {
            match half.try_write(&state.buf) {
                Ok(0) => {
                    state.closed = true;
                    break;
                }
                Ok(n) => state.buf.advance(n),
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
            state.buf = BytesMut::new();
        } else if state.buf.capacity() > KEEP_BUFFER_BYTES {
            state.buf = BytesMut::with_capacity(8 * 1024);
        }
        state.parked = false;
        self.drained.notify_waiters();
    }

    /// Waits until the backlog is below the high-water mark (returns at once normally).
    pub(crate) async fn wait_for_room(&self) {
        loop {
            let drained = self.drained.notified();
            {
                let state = lock(&self.state);
                if state.closed || state.buf.len() < self.high_water {
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
        match &self.sink {
            Sink::Tcp(half) => loop {
                {
                    let mut state = lock(&self.state);
                    if state.closed {
                        return false;
                    }
                    if state.buf.is_empty() {
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
                let chunk = {
                    let mut state = lock(&self.state);
                    if state.closed {
                        return false;
                    }
                    if state.buf.is_empty() {
                        state.parked = false;
                        drop(state);
                        self.drained.notify_waiters();
                        return true;
                    }
                    state.buf.split()
                };
                let mut writer = writer.lock().await;
                let written = async {
                    writer.write_all(&chunk).await?;
                    writer.flush().await
                };
                if let Err(e) = written.await {
                    debug!(error = %e, "writing to the client failed");
                    lock(&self.state).closed = true;
                    return false;
                }
            },
        }
    }

    /// Stops accepting frames and shuts the write side down, so the client sees the end at once
    /// even while the Python thread still holds the outbox (a call stuck in C code).
    async fn close(&self) {
        {
            let mut state = lock(&self.state);
            state.closed = true;
            state.buf = BytesMut::new();
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
