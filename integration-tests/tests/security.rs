//! Token authentication: challenge–response, clear errors, rate limiting.

use std::time::{Duration, Instant};

use rpyc_client::{Connection, Error};
use rpyc_integration_tests::TestServer;

fn token_file(name: &str, token: &str) -> anyhow::Result<std::path::PathBuf> {
    let path = std::env::temp_dir().join(format!("rpyc-test-{}-{name}.token", std::process::id()));
    std::fs::write(&path, format!("{token}\n"))?;
    Ok(path)
}

#[tokio::test]
async fn token_is_required_and_checked() -> anyhow::Result<()> {
    let path = token_file("required", "correct horse battery staple")?;
    let server = TestServer::builder()
        .arg("--token-file")
        .arg(path.display().to_string())
        .start()?;
    assert!(server.wait_for_log("clients must authenticate", Duration::from_secs(5)));

    // No token: a clear error naming what to do.
    let err = Connection::connect(server.url())
        .await
        .expect_err("no token");
    assert!(
        matches!(err, Error::AuthenticationRequired { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("requires a token"), "{err}");

    // Wrong token: refused, and the server logs the peer.
    let err = Connection::builder(server.url())
        .token("wrong")
        .connect()
        .await
        .expect_err("wrong token");
    assert!(err.is_disconnected(), "{err:?}");
    assert!(err.to_string().contains("authentication failed"), "{err}");
    assert!(server.wait_for_log("authentication failed", Duration::from_secs(5)));
    assert!(server.stderr().contains("127.0.0.1"), "{}", server.stderr());

    // Right token, through the builder and through an rpyc:// URL.
    let conn = Connection::builder(server.url())
        .token("correct horse battery staple")
        .connect()
        .await?;
    assert_eq!(conn.eval::<i64>("1+1").await?, 2);
    let url = format!("rpyc://correct horse battery staple@{}", server.url());
    let conn = Connection::connect(url.as_str()).await?;
    assert_eq!(conn.eval::<i64>("2+2").await?, 4);
    let blocking = std::thread::spawn({
        let url = url.clone();
        move || -> anyhow::Result<i64> {
            let conn = rpyc_client::blocking::Connection::connect(url.as_str())?;
            Ok(conn.eval::<i64>("3+3")?)
        }
    });
    assert_eq!(
        blocking
            .join()
            .map_err(|_| anyhow::anyhow!("thread panicked"))??,
        6
    );
    let _ = std::fs::remove_file(path);
    Ok(())
}

#[tokio::test]
async fn token_from_the_environment() -> anyhow::Result<()> {
    let server = TestServer::builder()
        .env("RPYC_TOKEN", "from-env")
        .start()?;
    assert!(Connection::connect(server.url()).await.is_err());
    let conn = Connection::builder(server.url())
        .token("from-env")
        .connect()
        .await?;
    assert_eq!(conn.eval::<String>("'ok'").await?, "ok");
    Ok(())
}

/// A recorded handshake cannot be replayed: each connection gets a fresh challenge, so the
/// proof of one connection does not open another.
#[tokio::test]
async fn a_replayed_proof_is_refused() -> anyhow::Result<()> {
    use rpyc_protocol::handshake::{GREETING_LEN, greeting};
    use rpyc_protocol::{Message, codec};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let server = TestServer::builder()
        .env("RPYC_TOKEN", "replay-me")
        .start()?;
    async fn challenge(server: &TestServer) -> anyhow::Result<(tokio::net::TcpStream, [u8; 32])> {
        let mut s = tokio::net::TcpStream::connect(server.addr()).await?;
        s.write_all(&greeting()).await?;
        let mut g = [0u8; GREETING_LEN];
        s.read_exact(&mut g).await?;
        let mut len = [0u8; 4];
        s.read_exact(&mut len).await?;
        let mut payload = vec![0u8; u32::from_be_bytes(len) as usize];
        s.read_exact(&mut payload).await?;
        match codec::decode(&payload)? {
            Message::Challenge { nonce } => Ok((s, nonce)),
            other => anyhow::bail!("expected a challenge, got {other:?}"),
        }
    }
    let (_first, nonce1) = challenge(&server).await?;
    let (mut second, nonce2) = challenge(&server).await?;
    assert_ne!(nonce1, nonce2, "challenges must differ");
    // The right proof for the first challenge, replayed on the second connection.
    let proof = rpyc_protocol::auth::proof(b"replay-me", &nonce1);
    let mut frame = bytes::BytesMut::new();
    codec::encode_frame(&Message::Authenticate { proof }, 1024, &mut frame)?;
    second.write_all(&frame).await?;
    let mut len = [0u8; 4];
    second.read_exact(&mut len).await?;
    let mut payload = vec![0u8; u32::from_be_bytes(len) as usize];
    second.read_exact(&mut payload).await?;
    match codec::decode(&payload)? {
        Message::Goodbye { reason } => assert!(reason.contains("authentication failed")),
        other => anyhow::bail!("a replayed proof was accepted: {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn repeated_failures_are_slowed_down() -> anyhow::Result<()> {
    let server = TestServer::builder()
        .env("RPYC_TOKEN", "slow-down")
        .start()?;
    let attempt = |token: &'static str| {
        let url = server.url();
        async move {
            let started = Instant::now();
            let result = Connection::builder(url).token(token).connect().await;
            (started.elapsed(), result)
        }
    };
    let mut times = Vec::new();
    for _ in 0..5 {
        let (took, result) = attempt("guess").await;
        assert!(result.is_err());
        times.push(took);
    }
    println!("failed attempts took {times:?}");
    assert!(times[0] < Duration::from_millis(200), "{times:?}");
    assert!(
        times[4] >= Duration::from_millis(400),
        "no slow-down: {times:?}"
    );
    // The right token still works (after the penalty), and other clients are unaffected.
    let (_, ok) = attempt("slow-down").await;
    assert_eq!(ok?.eval::<i64>("7").await?, 7);
    let healthy = async {
        let conn = Connection::builder(server.url())
            .token("slow-down")
            .connect()
            .await?;
        anyhow::ensure!(conn.eval::<i64>("sum(range(101))").await? == 5050);
        anyhow::Ok(())
    };
    healthy.await?;
    Ok(())
}
