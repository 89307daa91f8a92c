//! Stock Python RPyC clients on the same port (issue 6): detection and the async side.
//!
//! Our native greeting starts with `0xF0`; a stock RPyC connection starts with a frame whose
//! u32 big-endian length begins with `0x00` for any sane size. [`detect`] peeks at the first
//! frame header (without consuming it), and [`serve`] then speaks RPyC's own protocol: frames are
//! `[u32 BE length][u8 compressed][payload][b'\n']` (zlib payloads are inflated, with the
//! frame limit applied before and after), each payload one brine-encoded message
//! (`rpyc_protocol::brine::message`).
//!
//! A reader task decodes frames and hands messages to the connection's
//! [`ClassicWorker`](crate::python::ClassicWorker) (the Python thread); pings are echoed here
//! without Python and `HANDLE_CLOSE` ends the connection. Frames go out through the connection
//! [`Outbox`]: written by the thread that makes them, the writer task only flushing backlogs.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use rpyc_protocol::brine::Value;
use rpyc_protocol::brine::message::{
    FRAME_HEADER_LEN, Message, MessageKind, decode_payload, encode_frame, handler, inflate, label,
    parse_header,
};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tokio_util::codec::{Decoder, FramedRead};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::{ProtocolMode, ServerConfig};
use crate::connection::outbox::Outbox;
use crate::error::ConnectionError;
use crate::python::{ClassicOptions, ClassicWorker, FrameSink};

/// First byte of our native greeting (`rpyc_protocol::handshake::MAGIC`).
const NATIVE_FIRST_BYTE: u8 = 0xF0;
/// Most buffer space reserved ahead of data that has not arrived yet (a peer's length prefix is
/// only a claim).
const MAX_RESERVE_AHEAD: usize = 1 << 20;

/// Whether the client on `socket` is a stock RPyC client, by `config.protocol` and, in `auto`
/// mode, by its first frame header (peeked, so the native handshake still sees it).
///
/// # Errors
/// [`ConnectionError::HandshakeTimeout`] if the client sends nothing in time, or an I/O error.
pub(crate) async fn detect(
    socket: &TcpStream,
    config: &ServerConfig,
) -> Result<bool, ConnectionError> {
    match config.protocol {
        ProtocolMode::Native => return Ok(false),
        ProtocolMode::Rpyc => return Ok(true),
        ProtocolMode::Auto => {}
    }
    // A stock RPyC frame header is a big-endian length and a compression flag (0 or 1); wait
    // (bounded) until those five bytes are there or the client clearly sent something else.
    let mut head = [0u8; 5];
    let peeked = tokio::time::timeout(config.handshake_timeout, async {
        loop {
            let n = socket.peek(&mut head).await?;
            if n == 0 || n >= head.len() || head[0] == NATIVE_FIRST_BYTE {
                return Ok::<usize, std::io::Error>(n);
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    })
    .await;
    let n = match peeked {
        Err(_) => return Err(ConnectionError::HandshakeTimeout(config.handshake_timeout)),
        Ok(Err(e)) => return Err(ConnectionError::Io(e)),
        Ok(Ok(n)) => n,
    };
    // A TLS ClientHello: handshake record (0x16), version 3.x.
    if n >= 2 && head[0] == 0x16 && head[1] == 0x03 {
        return Err(ConnectionError::TlsClient);
    }
    let length = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
    // Anything else (our greeting, end of stream, garbage) goes to the native handshake, which
    // names what is wrong.
    Ok(n >= head.len()
        && head[0] != NATIVE_FIRST_BYTE
        && length <= config.max_frame_bytes
        && head[4] <= 1)
}

/// Serves a stock RPyC client until it leaves, the connection fails, or `stop` fires. Returns
/// why it closed.
pub(crate) async fn serve(
    socket: TcpStream,
    conn_id: u64,
    config: Arc<ServerConfig>,
    stop: CancellationToken,
) -> Result<&'static str, ConnectionError> {
    if config.token.is_some() {
        // Stock RPyC has no way to prove it knows the token: serving it would bypass the
        // authentication the operator asked for.
        return Err(ConnectionError::RpycRefused(
            "the server requires a token, which stock RPyC clients cannot present",
        ));
    }
    socket.set_nodelay(true)?;
    info!(conn = conn_id, "stock RPyC client");
    let (read, write) = socket.into_split();
    // Frames are written by whichever thread makes them (the Python thread for replies and
    // callbacks, the reader for pings), straight to the socket; the writer task only flushes
    // what the socket could not take at once.
    let outbox = Arc::new(Outbox::tcp(write, config.max_frame_bytes));
    let writer_done = CancellationToken::new();
    let writer = tokio::spawn({
        let outbox = Arc::clone(&outbox);
        let done = writer_done.clone();
        async move { outbox.run(done).await }
    });
    let sink_outbox = Arc::clone(&outbox);
    let sink: FrameSink = Arc::new(move |frame: Vec<u8>| sink_outbox.send_frame(&frame));
    let worker = ClassicWorker::spawn(conn_id, ClassicOptions::new(config.max_frame_bytes), sink)
        .map_err(ConnectionError::Worker)?;

    let mut frames = FramedRead::new(QuickAck(read), RpycFrames::new(config.max_frame_bytes));
    let outcome = loop {
        let frame = tokio::select! {
            frame = frames.next() => frame,
            () = stop.cancelled() => break Ok("server shutting down"),
        };
        let payload = match frame {
            None => break Ok("client disconnected"),
            // A length above the limit, a bad zlib stream, or a socket error.
            Some(Err(e)) => break Err(ConnectionError::Io(e)),
            Some(Ok(payload)) => payload,
        };
        let message = match decode_payload(&payload) {
            Ok(m) => m,
            Err(e) => {
                // The framing is intact, so the connection can go on; without a sequence
                // number there is nobody to answer.
                warn!(error = %e, bytes = payload.len(), "malformed RPyC message");
                continue;
            }
        };
        match message.request_parts() {
            Some((handler::CLOSE, _)) => break Ok("client closed the connection"),
            Some((handler::PING, args)) => {
                if let Some(echo) = ping_reply(message.seq, args, config.max_frame_bytes) {
                    outbox.send_frame(&echo);
                    continue;
                }
            }
            _ => {}
        }
        if message.kind == MessageKind::Request {
            debug!(
                seq = message.seq,
                handler = message
                    .request_parts()
                    .map_or("?", |(h, _)| handler::name(h)),
                "RPyC request"
            );
        }
        // A client that does not read its replies cannot make us buffer without bound.
        tokio::select! {
            () = outbox.wait_for_room() => {}
            () = stop.cancelled() => break Ok("server shutting down"),
        }
        if worker.deliver(message).is_err() {
            break Ok("python worker stopped");
        }
    };

    // Dropping the worker closes its inbox: a callback waiting for this client fails at once,
    // and the thread frees the connection's objects when its current request is done.
    drop(worker);
    writer_done.cancel();
    if let Err(e) = writer.await {
        warn!(error = %e, "RPyC writer task failed");
    }
    outcome
}

/// The read half of a stock client's socket, acknowledging what arrives at once (Linux
/// `TCP_QUICKACK`, re-armed before every read).
///
/// Stock clients leave Nagle's algorithm on, so a small frame they send (a callback's reply)
/// waits until their previous data is acknowledged. A server that delays its ACK (it has
/// nothing to send: it waits for that very frame) then stalls the exchange for the delayed-ACK
/// timeout, about 40 ms; with two client threads making callbacks this happened on every call.
struct QuickAck(OwnedReadHalf);

impl AsyncRead for QuickAck {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        #[cfg(target_os = "linux")]
        {
            // Best effort: without it the exchange is only slower.
            let _ = socket2::SockRef::from(self.0.as_ref()).set_tcp_quickack(true);
        }
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

/// The echo of a ping whose data is a plain value, built without Python.
fn ping_reply(seq: u64, args: &Value, max_frame_bytes: usize) -> Option<Vec<u8>> {
    let [l, items] = args.as_tuple()? else {
        return None;
    };
    if l.as_int() != Some(label::VALUE) {
        return None;
    }
    let [data] = items.as_tuple()? else {
        return None;
    };
    let reply = Message {
        kind: MessageKind::Reply,
        seq,
        body: Value::Tuple(vec![Value::Int(label::VALUE), data.clone()]),
    };
    let mut frame = Vec::new();
    encode_frame(&reply, max_frame_bytes, &mut frame).ok()?;
    Some(frame)
}

/// Cuts RPyC frames out of the byte stream and yields their (inflated) payloads.
#[derive(Debug)]
struct RpycFrames {
    max_frame_bytes: usize,
}

impl RpycFrames {
    fn new(max_frame_bytes: usize) -> Self {
        RpycFrames { max_frame_bytes }
    }
}

impl Decoder for RpycFrames {
    type Item = Bytes;
    type Error = std::io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, std::io::Error> {
        let Some(header) = src.get(..FRAME_HEADER_LEN) else {
            return Ok(None);
        };
        let mut raw = [0u8; FRAME_HEADER_LEN];
        raw.copy_from_slice(header);
        let header = parse_header(&raw);
        if header.len > self.max_frame_bytes {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "frame refused: RPyC frame of {} bytes exceeds the limit of {} bytes",
                    header.len, self.max_frame_bytes
                ),
            ));
        }
        // Header, payload and the trailing newline (read and dropped unchecked, as stock does).
        let total = FRAME_HEADER_LEN + header.len + 1;
        if src.len() < total {
            src.reserve((total - src.len()).min(MAX_RESERVE_AHEAD));
            return Ok(None);
        }
        let frame = src.split_to(total).freeze();
        let payload = frame.slice(FRAME_HEADER_LEN..FRAME_HEADER_LEN + header.len);
        if !header.compressed {
            return Ok(Some(payload));
        }
        inflate(&payload, self.max_frame_bytes)
            .map(|inflated| Some(Bytes::from(inflated)))
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rpyc_protocol::brine::message::deflate;

    fn frame(payload: &[u8], compressed: bool) -> Vec<u8> {
        let body = if compressed {
            deflate(payload)
        } else {
            payload.to_vec()
        };
        let mut out = (body.len() as u32).to_be_bytes().to_vec();
        out.push(u8::from(compressed));
        out.extend_from_slice(&body);
        out.push(b'\n');
        out
    }

    #[test]
    fn frames_split_anywhere_decode_whole() -> std::io::Result<()> {
        let mut codec = RpycFrames::new(1 << 20);
        let payload = b"\x01\x11\x50\x11\x53\x11\x51\x02".to_vec();
        let big = vec![7u8; 10_000];
        let mut stream = frame(&payload, false);
        stream.extend(frame(&big, true));
        let mut src = BytesMut::new();
        let mut got = Vec::new();
        for chunk in stream.chunks(3) {
            src.extend_from_slice(chunk);
            while let Some(p) = codec.decode(&mut src)? {
                got.push(p);
            }
        }
        assert_eq!(got, vec![Bytes::from(payload), Bytes::from(big)]);
        assert!(src.is_empty());
        Ok(())
    }

    #[test]
    fn oversized_and_bombs_are_refused() {
        let mut codec = RpycFrames::new(1000);
        let mut src = BytesMut::from(&[0xff, 0xff, 0xff, 0xf0, 0][..]);
        assert!(codec.decode(&mut src).is_err());
        // Small on the wire, too large inflated.
        let mut src = BytesMut::from(&frame(&vec![0u8; 5000], true)[..]);
        assert!(codec.decode(&mut src).is_err());
    }

    #[test]
    fn pings_echo_plain_data_only() {
        let data = Value::from("abc");
        let args = Value::Tuple(vec![Value::Int(1), Value::Tuple(vec![data])]);
        let echo = ping_reply(10, &args, 1 << 20);
        assert_eq!(
            echo,
            Some(vec![
                0, 0, 0, 10, 0, 2, 0x11, 0x5a, 0x11, 0x51, 0x08, 0x0c, b'a', b'b', b'c', b'\n'
            ])
        );
        let by_ref = Value::Tuple(vec![Value::Int(2), Value::Tuple(vec![])]);
        assert_eq!(ping_reply(1, &by_ref, 1 << 20), None);
    }
}
