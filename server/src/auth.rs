//! Token authentication in the handshake (see `rpyc_protocol::auth` for the exchange).
//!
//! The token is never sent: the server sends a fresh random challenge and checks the client's
//! HMAC over it in constant time. Failures are logged with the peer address, and repeated
//! failures from one address are slowed down (a delay that doubles with each failure within
//! [`FAILURE_WINDOW`], capped at [`MAX_DELAY`]), so guessing is impractical.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rpyc_protocol::auth::{AUTH_BYTES, verify};
use rpyc_protocol::{Message, codec};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::warn;

use crate::error::ConnectionError;

/// Failures older than this are forgotten.
const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Failures allowed in the window before answers are delayed.
const FREE_FAILURES: u32 = 3;
/// Longest delay imposed on a failing address.
const MAX_DELAY: Duration = Duration::from_secs(10);
/// An authentication frame is small; anything bigger is not one.
const MAX_AUTH_FRAME: usize = 256;

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

fn failures() -> &'static Mutex<HashMap<IpAddr, Failures>> {
    static FAILURES: OnceLock<Mutex<HashMap<IpAddr, Failures>>> = OnceLock::new();
    FAILURES.get_or_init(Mutex::default)
}

/// The delay owed by `ip` before its next attempt is answered.
fn penalty(ip: IpAddr) -> Duration {
    let mut map = failures().lock().unwrap_or_else(PoisonError::into_inner);
    map.retain(|_, f| f.last.elapsed() < FAILURE_WINDOW);
    match map.get(&ip) {
        Some(f) if f.count >= FREE_FAILURES => {
            let doublings = (f.count - FREE_FAILURES).min(16);
            (Duration::from_millis(250) * 2u32.pow(doublings)).min(MAX_DELAY)
        }
        _ => Duration::ZERO,
    }
}

fn record(ip: IpAddr, ok: bool) {
    let mut map = failures().lock().unwrap_or_else(PoisonError::into_inner);
    if ok {
        map.remove(&ip);
    } else {
        let entry = map.entry(ip).or_insert(Failures {
            count: 0,
            last: Instant::now(),
        });
        entry.count += 1;
        entry.last = Instant::now();
    }
}

/// Challenges the client to prove it knows `token`. On failure the client is told why (a
/// goodbye frame) and an error is returned; the caller closes the connection.
pub(crate) async fn authenticate(
    socket: &mut (impl AsyncRead + AsyncWrite + Unpin),
    peer: SocketAddr,
    token: &[u8],
    timeout: Duration,
) -> Result<(), ConnectionError> {
    let delay = penalty(peer.ip());
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut nonce = [0u8; AUTH_BYTES];
    getrandom::fill(&mut nonce).map_err(|e| {
        ConnectionError::Io(std::io::Error::other(format!(
            "no randomness for a challenge: {e}"
        )))
    })?;
    write_message(socket, &Message::Challenge { nonce }).await?;

    let answer = match tokio::time::timeout(timeout, read_small_message(socket)).await {
        Err(_) => return Err(ConnectionError::HandshakeTimeout(timeout)),
        Ok(answer) => answer?,
    };
    let ok = matches!(answer, Message::Authenticate { proof } if verify(token, &nonce, &proof));
    record(peer.ip(), ok);
    if ok {
        return Ok(());
    }
    warn!(%peer, "authentication failed: wrong or missing token");
    let _ = write_message(
        socket,
        &Message::Goodbye {
            reason: "authentication failed: wrong token".to_owned(),
        },
    )
    .await;
    Err(ConnectionError::AuthenticationFailed)
}

async fn write_message(
    socket: &mut (impl AsyncWrite + Unpin),
    message: &Message,
) -> Result<(), ConnectionError> {
    let mut buf = BytesMut::new();
    codec::encode_frame(message, MAX_AUTH_FRAME, &mut buf)
        .map_err(|e| ConnectionError::Io(std::io::Error::other(e)))?;
    socket.write_all(&buf).await?;
    socket.flush().await?;
    Ok(())
}

/// Reads exactly one frame of at most [`MAX_AUTH_FRAME`] bytes (never more than that frame,
/// so nothing the client sends after it is lost).
async fn read_small_message(
    socket: &mut (impl AsyncRead + Unpin),
) -> Result<Message, ConnectionError> {
    let mut len = [0u8; codec::LENGTH_PREFIX_BYTES];
    socket.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_AUTH_FRAME {
        return Err(ConnectionError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("expected an authentication frame, got a {len}-byte frame"),
        )));
    }
    let mut payload = vec![0u8; len];
    socket.read_exact(&mut payload).await?;
    codec::decode(&payload).map_err(ConnectionError::Handshake)
}
