//! One client connection: greeting, a reader task and a writer task, and the Python worker.
//!
//! The reader handles `Ping`, `Cancel` and `Release` itself, so a ping is answered and a
//! cancel takes effect while Python is busy; requests go to the connection's
//! [`Worker`](crate::python::Worker), which writes each reply itself through the
//! [`Outbox`](outbox::Outbox).

pub(crate) mod outbox;

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::BytesMut;
use futures_util::StreamExt;
use rpyc_protocol::handshake::{GREETING_LEN, check_greeting, greeting};
use rpyc_protocol::{Message, ProtocolError, ServerError, ServerInfo, codec};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::config::ServerConfig;
use crate::error::ConnectionError;
use crate::python::{BlobBuffers, Blobs, Worker};
use outbox::Outbox;

/// Serves one connection until the client leaves, the connection fails, or `stop` fires.
/// Returns why it closed.
pub(crate) async fn serve(
    socket: TcpStream,
    conn_id: u64,
    config: Arc<ServerConfig>,
    stop: CancellationToken,
) -> Result<&'static str, ConnectionError> {
    socket.set_nodelay(true)?;
    let peer = socket.peer_addr()?;
    if let Some(tls) = &config.tls {
        let accepted =
            tokio::time::timeout(config.handshake_timeout, tls.acceptor().accept(socket)).await;
        let stream = match accepted {
            Err(_) => return Err(ConnectionError::HandshakeTimeout(config.handshake_timeout)),
            Ok(Err(e)) => return Err(ConnectionError::Tls(e)),
            Ok(Ok(stream)) => stream,
        };
        return serve_native(stream, peer, conn_id, config, stop).await;
    }
    // Issue 6: a stock Python RPyC client on the same port.
    if crate::rpyc_compat::detect(&socket, &config).await? {
        return crate::rpyc_compat::serve(socket, conn_id, config, stop).await;
    }
    serve_native(socket, peer, conn_id, config, stop).await
}

/// Requests run ahead of their replies at most this far while replies go out at once.
const MAX_IN_FLIGHT: usize = 1024;

/// Something read from the client and not yet given to the worker.
enum Held {
    Request {
        id: rpyc_protocol::RequestId,
        op: rpyc_protocol::Op,
        blobs: Blobs,
        bytes: usize,
    },
    Release(Vec<rpyc_protocol::NetRefId>),
}

impl Held {
    fn bytes(&self) -> usize {
        match self {
            Held::Request { bytes, .. } => *bytes,
            Held::Release(_) => 0,
        }
    }
}

/// Whether the worker may start another request now (see the flow control in `serve_native`).
fn may_start(worker: &Worker, outbox: &Outbox) -> bool {
    let backlog = outbox.backlog();
    let limit = if backlog >= outbox.high_water() {
        0
    } else if backlog > 0 {
        1
    } else {
        MAX_IN_FLIGHT
    };
    worker.in_flight() < limit
}

/// A byte stream a native connection runs over: plain TCP or TLS.
trait Transport: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Splits into a boxed reader and the outbox that writes.
    fn into_parts(self, max_frame_bytes: usize) -> (Box<dyn AsyncRead + Send + Unpin>, Outbox);
}

impl Transport for TcpStream {
    fn into_parts(self, max_frame_bytes: usize) -> (Box<dyn AsyncRead + Send + Unpin>, Outbox) {
        let (read, write) = self.into_split();
        (Box::new(read), Outbox::tcp(write, max_frame_bytes))
    }
}

impl Transport for tokio_rustls::server::TlsStream<TcpStream> {
    fn into_parts(self, max_frame_bytes: usize) -> (Box<dyn AsyncRead + Send + Unpin>, Outbox) {
        let (read, write) = tokio::io::split(self);
        (
            Box::new(read),
            Outbox::stream(Box::new(write), max_frame_bytes),
        )
    }
}

/// Serves the native protocol: greeting, authentication, then requests until the end.
async fn serve_native(
    mut socket: impl Transport,
    peer: std::net::SocketAddr,
    conn_id: u64,
    config: Arc<ServerConfig>,
    stop: CancellationToken,
) -> Result<&'static str, ConnectionError> {
    let welcome = Message::Welcome(ServerInfo {
        server: crate::SERVER_NAME.to_owned(),
        python_version: config.python_version.clone(),
        connection_id: conn_id,
    });
    // Without a token, our greeting and the welcome leave in one write: connecting costs the
    // TCP handshake plus one round trip.
    let welcome_sent = config.token.is_none();
    handshake(&mut socket, &config, welcome_sent.then_some(&welcome)).await?;
    if let Some(token) = &config.token {
        crate::auth::authenticate(
            &mut socket,
            peer,
            token.as_bytes(),
            config.handshake_timeout,
        )
        .await?;
    }

    let (read, outbox) = socket.into_parts(config.max_frame_bytes);
    let outbox = Arc::new(outbox);
    let writer_done = CancellationToken::new();
    let writer = tokio::spawn({
        let outbox = Arc::clone(&outbox);
        let done = writer_done.clone();
        async move { outbox.run(done).await }
    });

    if !welcome_sent {
        outbox.send(&welcome);
    }
    let worker = Worker::new(conn_id, Arc::clone(&outbox) as _);

    let mut frames = FramedRead::new(
        read,
        codec::framing(config.max_frame_bytes).accepting_blobs(),
    );
    // Flow control: requests the worker may not start yet wait here, in order with releases.
    // While replies go out at once, up to MAX_IN_FLIGHT requests run ahead (pipelining); while
    // some wait to be written (a slow reader), one at a time; above the outbox's high-water
    // mark, none, and once the held requests pass a frame's worth of bytes the socket is no
    // longer read. So a client that does not read its replies, or that sends big requests faster
    // than they run, cannot make the server buffer without bound, while ping and cancel are
    // still read until then.
    // Requests handed to the worker also hold their (decoded) arguments: at most a frame's
    // worth of them is queued at once, counted since the worker was last idle.
    let mut held: VecDeque<Held> = VecDeque::new();
    let mut held_bytes = 0usize;
    let mut queued_bytes = 0usize;
    let outcome = loop {
        if worker.in_flight() == 0 {
            queued_bytes = 0;
        }
        while let Some(next) = held.front() {
            let fits = queued_bytes == 0 || queued_bytes + next.bytes() <= config.max_frame_bytes;
            if !fits || !may_start(&worker, &outbox) {
                break;
            }
            match held.pop_front() {
                Some(Held::Request {
                    id,
                    op,
                    blobs,
                    bytes,
                }) => {
                    held_bytes -= bytes;
                    queued_bytes += bytes;
                    worker.submit(id, op, blobs);
                }
                Some(Held::Release(ids)) => worker.release(ids),
                None => break,
            }
        }
        let reading = held_bytes <= config.max_frame_bytes;
        let outbox_full = outbox.backlog() >= outbox.high_water();
        let frame = tokio::select! {
            biased;
            () = stop.cancelled() => {
                outbox.send(&Message::Goodbye {
                    reason: "server shutting down".to_owned(),
                });
                break Ok("server shutting down");
            }
            () = worker.answered(), if !held.is_empty() => continue,
            () = outbox.wait_for_room(), if worker.is_congested() || (!held.is_empty() && outbox_full) => {
                worker.resume();
                continue;
            }
            frame = frames.next(), if reading => frame,
        };
        let frame = match frame {
            None => break Ok("client disconnected"),
            // A bad length prefix (above the frame limit) or a socket error: the stream cannot
            // be resynchronised, so the connection ends here.
            Some(Err(e)) => {
                let e = if e.kind() == std::io::ErrorKind::InvalidData {
                    std::io::Error::new(
                        e.kind(),
                        format!(
                            "frame refused: {e} (the limit is {} bytes)",
                            config.max_frame_bytes
                        ),
                    )
                } else {
                    e
                };
                break Err(ConnectionError::Io(e));
            }
            Some(Ok(frame)) => frame,
        };
        let size = frame.size();
        // Large byte strings in a request share the frame rather than being copied out of it;
        // a blob frame's blobs are read straight into the `bytes` objects the call will get.
        let (frame, decoded, blobs) = if frame.blobs.is_empty() {
            let frame = frame.payload.freeze();
            let decoded = codec::decode_shared(&frame);
            (frame, decoded, Blobs::default())
        } else {
            let read = tokio::select! {
                () = stop.cancelled() => break Ok("server shutting down"),
                read = read_blobs(&mut frames, frame) => read,
            };
            match read {
                Ok(read) => read,
                Err(e) => break Err(e),
            }
        };
        match decoded {
            Ok(Message::Request { id, op }) => {
                held_bytes += size;
                held.push_back(Held::Request {
                    id,
                    op,
                    blobs,
                    bytes: size,
                });
            }
            Ok(Message::Ping { id }) => outbox.send(&Message::Pong { id }),
            Ok(Message::Cancel { id }) => {
                debug!(request = id.0, "cancel requested");
                let before = held.len();
                held.retain(|h| !matches!(h, Held::Request { id: held_id, .. } if *held_id == id));
                if held.len() == before {
                    worker.cancel(id);
                } else {
                    held_bytes = held.iter().map(Held::bytes).sum();
                    outbox.send(&Message::Response {
                        id,
                        result: Err(ServerError::Cancelled),
                    });
                }
            }
            Ok(Message::Release { ids }) if held.is_empty() => worker.release(ids),
            Ok(Message::Release { ids }) => held.push_back(Held::Release(ids)),
            Ok(Message::Goodbye { reason }) => {
                debug!(%reason, "client said goodbye");
                break Ok("client closed the connection");
            }
            Ok(
                other @ (Message::Welcome(_)
                | Message::Response { .. }
                | Message::Pong { .. }
                | Message::Challenge { .. }
                | Message::Authenticate { .. }),
            ) => {
                warn!(message = ?other, "ignoring a message a client should not send");
            }
            Err(e) => {
                warn!(error = %e, bytes = size, "malformed message");
                if let Some(id) = codec::peek_request_id(&frame) {
                    outbox.send(&Message::Response {
                        id,
                        result: Err(ServerError::InvalidRequest(e.to_string())),
                    });
                }
            }
        }
    };

    // Dropping the worker interrupts a running call and frees the connection's objects.
    drop(worker);
    // The writer flushes what is left and shuts the write side down, even if the Python thread
    // still holds the outbox (a call stuck in C code); later replies are dropped.
    writer_done.cancel();
    if let Err(e) = writer.await {
        warn!(error = %e, "writer task failed");
    }
    outcome
}

/// Blob frames at least this large have their memory populated by another thread while the
/// reader fills it (see [`BlobBuffers::populate_in_background`]).
const POPULATE_MIN_BYTES: usize = 8 << 20;

/// Reads the blobs of a blob `frame` into `bytes` objects and decodes the frame with them.
/// Returns the frame's head (for an error reply's request id), the message, and the blobs
/// for the worker.
async fn read_blobs(
    frames: &mut FramedRead<Box<dyn AsyncRead + Send + Unpin>, codec::FrameCodec>,
    frame: codec::Frame,
) -> Result<(bytes::Bytes, Result<Message, ProtocolError>, Blobs), ConnectionError> {
    let lens = frame.blobs.iter().map(|blob| blob.len).collect();
    let mut buffers = BlobBuffers::allocate(lens)
        .await
        .map_err(|e| ConnectionError::Io(std::io::Error::other(e)))?;
    let populating = (frame.size() >= POPULATE_MIN_BYTES).then(|| buffers.populate_in_background());
    // What the frame reader has buffered past the head comes first; the rest is read straight
    // from the socket, and whatever follows the blobs goes back to the frame reader.
    let mut buffered = frames.read_buffer_mut().split();
    let read = codec::read_blobs(&mut buffered, frames.get_mut(), &mut buffers.buffers()).await;
    if let Some(populating) = populating {
        populating.finish().await;
    }
    read?;
    *frames.read_buffer_mut() = buffered;
    // SAFETY: `read_blobs` returned Ok, so it filled every buffer.
    let (bytes, blobs) = unsafe { buffers.filled() };
    let head = frame.payload.freeze();
    let placed = frame
        .blobs
        .iter()
        .map(|blob| blob.position)
        .zip(bytes)
        .collect();
    let decoded = codec::decode_blobs(&head, placed);
    Ok((head, decoded, blobs))
}

/// Exchanges greetings, sending `then` in the same write as ours; on a version mismatch the
/// client still gets our greeting (to report both versions) before the connection closes.
async fn handshake(
    socket: &mut (impl AsyncRead + AsyncWrite + Unpin),
    config: &ServerConfig,
    then: Option<&Message>,
) -> Result<(), ConnectionError> {
    let mut theirs = [0u8; GREETING_LEN];
    match tokio::time::timeout(config.handshake_timeout, socket.read_exact(&mut theirs)).await {
        Err(_) => return Err(ConnectionError::HandshakeTimeout(config.handshake_timeout)),
        Ok(Err(e)) => return Err(ConnectionError::Io(e)),
        Ok(Ok(_)) => {}
    }
    match check_greeting(&theirs) {
        Ok(_) => {
            let mut out = BytesMut::from(&greeting()[..]);
            if let Some(message) = then {
                codec::encode_frame(message, config.max_frame_bytes, &mut out)
                    .map_err(|e| ConnectionError::Io(std::io::Error::other(e)))?;
            }
            socket.write_all(&out).await?;
            socket.flush().await?;
            Ok(())
        }
        Err(e @ ProtocolError::VersionMismatch { .. }) => {
            let _ = socket.write_all(&greeting()).await;
            let _ = socket.flush().await;
            Err(ConnectionError::Handshake(e))
        }
        // A TLS ClientHello: handshake record (0x16), version 3.x.
        Err(_) if theirs[0] == 0x16 && theirs[1] == 0x03 => Err(ConnectionError::TlsClient),
        Err(e) => Err(ConnectionError::Handshake(e)),
    }
}

/// Greets a client only to tell it why it cannot be served, then closes.
pub(crate) async fn refuse(
    socket: TcpStream,
    config: &ServerConfig,
    reason: String,
) -> Result<(), ConnectionError> {
    match &config.tls {
        Some(tls) => {
            let accepted =
                tokio::time::timeout(config.handshake_timeout, tls.acceptor().accept(socket))
                    .await
                    .map_err(|_| ConnectionError::HandshakeTimeout(config.handshake_timeout))?
                    .map_err(ConnectionError::Tls)?;
            refuse_on(accepted, config, reason).await
        }
        None => refuse_on(socket, config, reason).await,
    }
}

async fn refuse_on(
    mut socket: impl AsyncRead + AsyncWrite + Unpin,
    config: &ServerConfig,
    reason: String,
) -> Result<(), ConnectionError> {
    handshake(&mut socket, config, Some(&Message::Goodbye { reason })).await?;
    socket.shutdown().await?;
    Ok(())
}
