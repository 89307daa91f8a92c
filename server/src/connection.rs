//! One client connection: greeting, a reader task and a writer task, and the Python worker.
//!
//! The reader handles `Ping`, `Cancel` and `Release` itself, so a ping is answered and a
//! cancel takes effect while Python is busy; requests go to the connection's
//! [`Worker`](crate::python::Worker), whose replies reach the writer through a channel. The
//! writer batches whatever is queued into one write.

use std::sync::Arc;

use bytes::BytesMut;
use futures_util::StreamExt;
use rpyc_protocol::handshake::{GREETING_LEN, check_greeting, greeting};
use rpyc_protocol::{Message, ProtocolError, RequestId, ServerError, ServerInfo, Value, codec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::config::ServerConfig;
use crate::error::ConnectionError;
use crate::python::Worker;

/// Write buffers above this size are not kept between writes.
const KEEP_BUFFER_BYTES: usize = 1 << 20;

/// What the writer task sends.
#[derive(Debug)]
enum Outgoing {
    Reply(RequestId, Result<Value, ServerError>),
    Message(Message),
}

/// Serves one connection until the client leaves, the connection fails, or `stop` fires.
/// Returns why it closed.
pub(crate) async fn serve(
    mut socket: TcpStream,
    conn_id: u64,
    config: Arc<ServerConfig>,
    stop: CancellationToken,
) -> Result<&'static str, ConnectionError> {
    socket.set_nodelay(true)?;
    handshake(&mut socket, &config).await?;

    let (read, write) = socket.into_split();
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let writer_done = CancellationToken::new();
    let writer = tokio::spawn(write_loop(
        write,
        out_rx,
        config.max_frame_bytes,
        writer_done.clone(),
    ));

    let reply_tx = out_tx.clone();
    let worker = Worker::spawn(
        conn_id,
        Box::new(move |id, result| {
            // The writer may be gone if the client left; the reply is then moot.
            let _ = reply_tx.send(Outgoing::Reply(id, result));
        }),
    )
    .map_err(ConnectionError::Worker)?;
    let _ = out_tx.send(Outgoing::Message(Message::Welcome(ServerInfo {
        server: crate::SERVER_NAME.to_owned(),
        python_version: config.python_version.clone(),
        connection_id: conn_id,
    })));

    let mut frames = FramedRead::new(read, codec::framing(config.max_frame_bytes));
    let outcome = loop {
        let frame = tokio::select! {
            frame = frames.next() => frame,
            () = stop.cancelled() => {
                let _ = out_tx.send(Outgoing::Message(Message::Goodbye {
                    reason: "server shutting down".to_owned(),
                }));
                break Ok("server shutting down");
            }
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
        match codec::decode(&frame) {
            Ok(Message::Request { id, op }) => {
                if let Err(e) = worker.submit(id, op) {
                    let _ = out_tx.send(Outgoing::Reply(
                        id,
                        Err(ServerError::InvalidRequest(e.to_string())),
                    ));
                    break Ok("python worker stopped");
                }
            }
            Ok(Message::Ping { id }) => {
                let _ = out_tx.send(Outgoing::Message(Message::Pong { id }));
            }
            Ok(Message::Cancel { id }) => {
                debug!(request = id.0, "cancel requested");
                worker.cancel(id);
            }
            Ok(Message::Release { ids }) => worker.release(ids),
            Ok(Message::Goodbye { reason }) => {
                debug!(%reason, "client said goodbye");
                break Ok("client closed the connection");
            }
            Ok(other @ (Message::Welcome(_) | Message::Response { .. } | Message::Pong { .. })) => {
                warn!(message = ?other, "ignoring a message a client should not send");
            }
            Err(e) => {
                warn!(error = %e, bytes = frame.len(), "malformed message");
                if let Some(id) = codec::peek_request_id(&frame) {
                    let _ = out_tx.send(Outgoing::Reply(
                        id,
                        Err(ServerError::InvalidRequest(e.to_string())),
                    ));
                }
            }
        }
    };

    // Dropping the worker interrupts a running call and frees the connection's objects.
    drop(worker);
    drop(out_tx);
    writer_done.cancel();
    match writer.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!(error = %e, "writing the last frames failed"),
        Err(e) => warn!(error = %e, "writer task failed"),
    }
    outcome
}

/// Exchanges greetings; on a version mismatch the client still gets our greeting (to report
/// both versions) before the connection closes.
async fn handshake(socket: &mut TcpStream, config: &ServerConfig) -> Result<(), ConnectionError> {
    let mut theirs = [0u8; GREETING_LEN];
    match tokio::time::timeout(config.handshake_timeout, socket.read_exact(&mut theirs)).await {
        Err(_) => return Err(ConnectionError::HandshakeTimeout(config.handshake_timeout)),
        Ok(Err(e)) => return Err(ConnectionError::Io(e)),
        Ok(Ok(_)) => {}
    }
    match check_greeting(&theirs) {
        Ok(_) => {
            socket.write_all(&greeting()).await?;
            Ok(())
        }
        Err(e @ ProtocolError::VersionMismatch { .. }) => {
            let _ = socket.write_all(&greeting()).await;
            Err(ConnectionError::Handshake(e))
        }
        Err(e) => Err(ConnectionError::Handshake(e)),
    }
}

/// Greets a client only to tell it why it cannot be served, then closes.
pub(crate) async fn refuse(
    mut socket: TcpStream,
    config: &ServerConfig,
    reason: String,
) -> Result<(), ConnectionError> {
    handshake(&mut socket, config).await?;
    let mut buf = BytesMut::new();
    codec::encode_frame(
        &Message::Goodbye { reason },
        config.max_frame_bytes,
        &mut buf,
    )
    .map_err(|e| ConnectionError::Io(std::io::Error::other(e)))?;
    socket.write_all(&buf).await?;
    socket.shutdown().await?;
    Ok(())
}

async fn write_loop(
    mut write: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    max_frame_bytes: usize,
    done: CancellationToken,
) -> std::io::Result<()> {
    let mut buf = BytesMut::with_capacity(8 * 1024);
    loop {
        let first = tokio::select! {
            biased;
            item = rx.recv() => item,
            () = done.cancelled() => None,
        };
        let closing = first.is_none();
        if let Some(item) = first {
            encode(item, max_frame_bytes, &mut buf);
        }
        // Everything already queued goes out in the same write.
        while buf.len() < KEEP_BUFFER_BYTES {
            match rx.try_recv() {
                Ok(item) => encode(item, max_frame_bytes, &mut buf),
                Err(_) => break,
            }
        }
        if !buf.is_empty() {
            write.write_all(&buf).await?;
            buf.clear();
            if buf.capacity() > KEEP_BUFFER_BYTES {
                buf = BytesMut::with_capacity(8 * 1024);
            }
        }
        if closing {
            return write.shutdown().await;
        }
    }
}

fn encode(item: Outgoing, max_frame_bytes: usize, buf: &mut BytesMut) {
    let message = match item {
        Outgoing::Reply(id, result) => Message::Response { id, result },
        Outgoing::Message(m) => m,
    };
    match codec::encode_frame(&message, max_frame_bytes, buf) {
        Ok(()) => {}
        Err(ProtocolError::TooLarge { size, max }) => {
            if let Message::Response { id, .. } = message {
                warn!(request = id.0, size, max, "result too large to send");
                let refusal = Message::Response {
                    id,
                    result: Err(ServerError::ResultTooLarge {
                        size: size as u64,
                        max: max as u64,
                    }),
                };
                if let Err(e) = codec::encode_frame(&refusal, max_frame_bytes, buf) {
                    warn!(error = %e, "cannot encode a refusal");
                }
            }
        }
        Err(e) => warn!(error = %e, "cannot encode a message"),
    }
}
