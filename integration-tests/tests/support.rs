//! Helpers shared by the tests.

use std::time::Duration;

use anyhow::{Context, bail};
use bytes::BytesMut;
use futures_util::StreamExt;
use rpyc_client::Connection;
use rpyc_integration_tests::TestServer;
use rpyc_protocol::handshake::{GREETING_LEN, greeting};
use rpyc_protocol::{Message, codec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tokio_util::codec::FramedRead;

/// Connects a client with a short default timeout, so a hang fails the test quickly.
pub(crate) async fn connect(server: &TestServer) -> anyhow::Result<Connection> {
    Ok(Connection::builder(server.url())
        .timeout(Duration::from_secs(20))
        .connect()
        .await?)
}

/// Checks that a fresh client still gets right answers (the server survived whatever a test
/// just did to it).
pub(crate) async fn assert_healthy(server: &TestServer) -> anyhow::Result<()> {
    let conn = connect(server).await.with_context(|| {
        format!(
            "server no longer accepts clients; log:\n{}",
            server.stderr()
        )
    })?;
    let n: i64 = conn.eval("sum(range(101))").await?;
    assert_eq!(n, 5050);
    conn.execute("import os\nz = os.getpid()").await?;
    let pid: u32 = conn.eval("z").await?;
    assert_eq!(pid, server.pid(), "answered by another process?");
    conn.close().await;
    Ok(())
}

/// `message` as the client writes it: a blob frame if it holds byte strings of a megabyte or
/// more, with the blobs spliced in after it.
pub(crate) fn client_frame(message: &Message) -> anyhow::Result<Vec<u8>> {
    let mut dst = BytesMut::new();
    let mut shared = Vec::new();
    codec::encode_frame_shared(
        message,
        codec::DEFAULT_MAX_FRAME_BYTES,
        true,
        &mut dst,
        &mut shared,
    )?;
    let mut wire = Vec::new();
    let mut pos = 0;
    for (at, bytes) in shared {
        wire.extend_from_slice(&dst[pos..at]);
        wire.extend_from_slice(&bytes);
        pos = at;
    }
    wire.extend_from_slice(&dst[pos..]);
    Ok(wire)
}

/// A raw connection that has done the greeting, for tests that send hand-made frames.
pub(crate) struct Raw {
    pub(crate) read: FramedRead<OwnedReadHalf, codec::FrameCodec>,
    pub(crate) write: tokio::net::tcp::OwnedWriteHalf,
}

impl Raw {
    pub(crate) async fn connect(server: &TestServer) -> anyhow::Result<Raw> {
        let mut stream = TcpStream::connect(server.addr()).await?;
        stream.write_all(&greeting()).await?;
        let mut theirs = [0u8; GREETING_LEN];
        stream.read_exact(&mut theirs).await?;
        rpyc_protocol::handshake::check_greeting(&theirs)?;
        let (read, write) = stream.into_split();
        let mut raw = Raw {
            read: FramedRead::new(read, codec::framing(codec::DEFAULT_MAX_FRAME_BYTES)),
            write,
        };
        match raw.recv().await? {
            Message::Welcome(_) => Ok(raw),
            other => bail!("expected a welcome, got {other:?}"),
        }
    }

    pub(crate) async fn send(&mut self, message: &Message) -> anyhow::Result<()> {
        let mut buf = BytesMut::new();
        codec::encode_frame(message, codec::DEFAULT_MAX_FRAME_BYTES, &mut buf)?;
        self.write.write_all(&buf).await?;
        Ok(())
    }

    pub(crate) async fn send_payload(&mut self, payload: &[u8]) -> anyhow::Result<()> {
        let len = u32::try_from(payload.len())?;
        self.write.write_all(&len.to_be_bytes()).await?;
        self.write.write_all(payload).await?;
        Ok(())
    }

    /// Sends raw bytes, a hand-made (or damaged) frame.
    pub(crate) async fn send_raw(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.write.write_all(bytes).await?;
        Ok(())
    }

    pub(crate) async fn recv(&mut self) -> anyhow::Result<Message> {
        let frame = tokio::time::timeout(Duration::from_secs(20), self.read.next())
            .await
            .context("no message from the server within 20 s")?
            .context("server closed the connection")??;
        Ok(codec::decode(&frame.payload)?)
    }

    /// Waits for the server to close the connection (EOF or reset), up to 20 s.
    pub(crate) async fn expect_closed(&mut self) -> anyhow::Result<()> {
        let end = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match self.read.next().await {
                    None | Some(Err(_)) => return,
                    Some(Ok(_)) => continue,
                }
            }
        })
        .await;
        end.context("the server did not close the connection")
    }
}
