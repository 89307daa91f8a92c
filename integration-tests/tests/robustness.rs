//! Broken and hostile input: each case ends with a check that another client still gets right
//! answers.

use std::time::Duration;

use rpyc_client::{Connection, Op, ServerError};
use rpyc_integration_tests::TestServer;
use rpyc_protocol::Message;
use rpyc_protocol::RequestId;
use rpyc_protocol::handshake::{GREETING_LEN, MAGIC};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{Raw, assert_healthy, client_frame, connect};

#[tokio::test]
async fn malformed_payloads_get_an_error_and_the_connection_lives_on() -> anyhow::Result<()> {
    let server = TestServer::start()?;
    let mut raw = Raw::connect(&server).await?;
    // Random bytes: logged, no reply possible (no request id), connection stays.
    raw.send_payload(&[0xde, 0xad, 0xbe, 0xef, 0x00, 0x13])
        .await?;
    raw.send_payload(&[]).await?;
    // A request whose body is damaged: an error reply naming its id.
    let mut payload = rpyc_protocol::codec::encode(&Message::Request {
        id: RequestId(77),
        op: Op::Eval {
            expr: "1".into(),
            mode: rpyc_client::ReturnMode::Value,
        },
    })?
    .to_vec();
    payload.truncate(payload.len() - 2);
    raw.send_payload(&payload).await?;
    match raw.recv().await? {
        Message::Response {
            id: RequestId(77),
            result: Err(ServerError::InvalidRequest(why)),
        } => assert!(why.contains("malformed"), "{why}"),
        other => anyhow::bail!("expected an invalid-request reply, got {other:?}"),
    }
    // The same connection still works.
    raw.send(&Message::Request {
        id: RequestId(78),
        op: Op::Eval {
            expr: "40+2".into(),
            mode: rpyc_client::ReturnMode::Value,
        },
    })
    .await?;
    match raw.recv().await? {
        Message::Response {
            id: RequestId(78),
            result: Ok(v),
        } => assert_eq!(v, rpyc_client::Value::Int(42)),
        other => anyhow::bail!("expected 42, got {other:?}"),
    }
    assert!(server.wait_for_log("malformed message", Duration::from_secs(5)));
    assert_healthy(&server).await
}

/// Frames of a megabyte and more are read into a buffer of their own and their byte strings
/// are not copied: a damaged one, one cut off halfway and one only announced behave as small
/// ones do.
#[tokio::test]
async fn large_frames_that_are_damaged_or_cut_off_do_no_harm() -> anyhow::Result<()> {
    let server = TestServer::start()?;
    let big = vec![0x5a_u8; 3 << 20];
    let request = |id: u64| Message::Request {
        id: RequestId(id),
        op: Op::Call {
            obj: rpyc_client::NetRefId(1),
            args: rpyc_client::protocol::Args {
                positional: vec![rpyc_client::Value::bytes(big.clone())],
                keyword: vec![],
            },
            mode: rpyc_client::ReturnMode::Value,
        },
    };
    let mut raw = Raw::connect(&server).await?;
    // Damaged after the byte string (its last bytes cut): an error naming the request.
    let mut payload = rpyc_protocol::codec::encode(&request(5))?.to_vec();
    payload.truncate(payload.len() - 2);
    raw.send_payload(&payload).await?;
    match raw.recv().await? {
        Message::Response {
            id: RequestId(5),
            result: Err(ServerError::InvalidRequest(why)),
        } => assert!(why.contains("malformed"), "{why}"),
        other => anyhow::bail!("expected an invalid-request reply, got {other:?}"),
    }
    // A well-formed one (its reference is unknown): answered, and the connection goes on.
    raw.send(&request(6)).await?;
    match raw.recv().await? {
        Message::Response {
            id: RequestId(6),
            result: Err(ServerError::UnknownReference(_)),
        } => {}
        other => anyhow::bail!("expected an unknown-reference reply, got {other:?}"),
    }
    // 200 MiB announced, 1 MiB sent, then gone; and 200 MiB announced, nothing sent, then gone.
    let mut cut = Raw::connect(&server).await?;
    cut.write.write_all(&(200u32 << 20).to_be_bytes()).await?;
    cut.write.write_all(&big[..1 << 20]).await?;
    let mut announced = Raw::connect(&server).await?;
    announced
        .write
        .write_all(&(200u32 << 20).to_be_bytes())
        .await?;
    assert_healthy(&server).await?;
    drop(cut);
    drop(announced);
    assert_healthy(&server).await
}

/// Blob frames (a request's byte strings of a megabyte or more sent after it, read straight
/// into `bytes` objects): a blob out of place gets an error reply and the connection goes on;
/// a damaged table, a frame above the limit, and blobs cut off or never sent close only that
/// connection.
#[tokio::test]
async fn blob_frames_that_are_damaged_or_cut_off_do_no_harm() -> anyhow::Result<()> {
    let server = TestServer::builder()
        .arg("--max-frame-bytes")
        .arg((8u32 << 20).to_string())
        .start()?;
    let bystander = connect(&server).await?;
    // The raw connection's own reference to a function that checks what it was given.
    let mut raw = Raw::connect(&server).await?;
    raw.send(&Message::Request {
        id: RequestId(1),
        op: Op::Eval {
            expr: "lambda xs: [(type(x).__name__, len(x), x.count(0x5a)) for x in xs]".into(),
            mode: rpyc_client::ReturnMode::Ref,
        },
    })
    .await?;
    let check = match raw.recv().await? {
        Message::Response {
            id: RequestId(1),
            result: Ok(rpyc_client::Value::Ref(r)),
        } => r.id,
        other => anyhow::bail!("expected a reference, got {other:?}"),
    };
    let request = |id: u64, sizes: &[usize]| Message::Request {
        id: RequestId(id),
        op: Op::Call {
            obj: check,
            args: rpyc_client::protocol::Args {
                positional: vec![rpyc_client::Value::List(
                    sizes
                        .iter()
                        .map(|&n| rpyc_client::Value::bytes(vec![0x5a_u8; n]))
                        .collect(),
                )],
                keyword: vec![],
            },
            mode: rpyc_client::ReturnMode::Value,
        },
    };
    let wire = client_frame(&request(5, &[1 << 20, 10, 2 << 20]))?;
    let prefix = u32::from_be_bytes(wire[..4].try_into()?);
    assert_ne!(
        prefix & rpyc_protocol::codec::BLOB_FRAME_FLAG,
        0,
        "a blob frame"
    );
    let table = 4 + (prefix & !rpyc_protocol::codec::BLOB_FRAME_FLAG) as usize;
    let edit = |at: usize, bytes: &[u8]| {
        let mut w = wire.clone();
        w[at..at + bytes.len()].copy_from_slice(bytes);
        w
    };

    // The first blob's position moved onto the list's tag: not where a byte string is. The
    // frame was read whole, so the connection goes on after an error reply.
    raw.send_raw(&edit(table + 4, &3u32.to_be_bytes())).await?;
    match raw.recv().await? {
        Message::Response {
            id: RequestId(5),
            result: Err(ServerError::InvalidRequest(why)),
        } => assert!(why.contains("blob"), "{why}"),
        other => anyhow::bail!("expected an invalid-request reply, got {other:?}"),
    }
    // The same frame undamaged: answered, with every byte string intact.
    let answer = |n: i64| {
        rpyc_client::Value::Tuple(vec![
            rpyc_client::Value::Str("bytes".into()),
            rpyc_client::Value::Int(n),
            rpyc_client::Value::Int(n),
        ])
    };
    let want = rpyc_client::Value::List(vec![answer(1 << 20), answer(10), answer(2 << 20)]);
    raw.send_raw(&wire).await?;
    match raw.recv().await? {
        Message::Response {
            id: RequestId(5),
            result: Ok(got),
        } => assert_eq!(got, want),
        other => anyhow::bail!("expected the byte strings' lengths, got {other:?}"),
    }

    // Damaged tables and oversized frames close that connection only.
    let cases = [
        ("no blobs", edit(table, &0u32.to_be_bytes())),
        ("too many blobs", edit(table, &100_000u32.to_be_bytes())),
        ("out of order", edit(table + 16, &1u32.to_be_bytes())),
        ("past the head", edit(table + 4, &u32::MAX.to_be_bytes())),
        (
            "above the limit",
            edit(table + 8, &(9u64 << 20).to_be_bytes()),
        ),
    ];
    for (what, frame) in cases {
        let mut raw = Raw::connect(&server).await?;
        // The server may close as soon as it reads the table, while the blobs are still being
        // written: a failed write is part of the expected outcome.
        let _ = raw.send_raw(&frame).await;
        raw.expect_closed().await.map_err(|e| e.context(what))?;
    }
    // Blobs cut off halfway, then gone; announced and never sent, then gone; and one that
    // stays connected mid-blob while others work.
    let mut cut = Raw::connect(&server).await?;
    cut.send_raw(&wire[..wire.len() - (1 << 20)]).await?;
    let mut announced = Raw::connect(&server).await?;
    announced.send_raw(&wire[..table + 4 + 2 * 12]).await?;
    let mut stalled = Raw::connect(&server).await?;
    stalled.send_raw(&wire[..wire.len() - 1]).await?;
    assert_eq!(bystander.eval::<i64>("1+1").await?, 2);
    assert_healthy(&server).await?;
    drop(cut);
    drop(announced);
    assert!(
        server.wait_for_log("middle of a blob", Duration::from_secs(5)),
        "{}",
        server.stderr()
    );
    // The last byte arrives: the stalled request is answered after all. (The stalled
    // connection's reference is unknown there: each connection has its own.)
    stalled.send_raw(&wire[wire.len() - 1..]).await?;
    assert!(matches!(
        stalled.recv().await?,
        Message::Response {
            id: RequestId(5),
            result: Err(ServerError::UnknownReference(_)),
        }
    ));
    // And the first connection still works.
    raw.send_raw(&wire).await?;
    assert!(matches!(raw.recv().await?, Message::Response { result: Ok(got), .. } if got == want));
    assert_healthy(&server).await
}

#[tokio::test]
async fn oversized_length_closes_only_that_connection() -> anyhow::Result<()> {
    let server = TestServer::builder()
        .arg("--max-frame-bytes")
        .arg("65536")
        .start()?;
    let bystander = connect(&server).await?;
    let mut raw = Raw::connect(&server).await?;
    raw.write.write_all(&[0xff, 0xff, 0xff, 0xf0]).await?;
    raw.expect_closed().await?;
    assert!(
        server.wait_for_log("frame refused", Duration::from_secs(5)),
        "{}",
        server.stderr()
    );
    assert_eq!(bystander.eval::<i64>("1+1").await?, 2);
    // A result above the limit is an error reply, not a dropped connection.
    let err = bystander
        .eval::<serde_bytes::ByteBuf>("b'x' * 100000")
        .await
        .expect_err("too large");
    assert!(err.to_string().contains("too large"), "{err}");
    assert_eq!(bystander.eval::<i64>("2+2").await?, 4);
    assert_healthy(&server).await
}

#[tokio::test]
async fn wrong_magic_and_wrong_version_are_refused() -> anyhow::Result<()> {
    let server = TestServer::start()?;
    // Not our protocol at all.
    let mut s = TcpStream::connect(server.addr()).await?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await?;
    let mut buf = Vec::new();
    // Closed with unread input, the socket may end in a reset rather than EOF; either way no
    // reply arrives.
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await?;
    assert!(buf.is_empty(), "an HTTP client got a reply: {read:?}");
    assert!(server.wait_for_log(
        "does not speak the rpyc-rs protocol",
        Duration::from_secs(5)
    ));

    // Our magic, another version: the server greets (so the client can report both versions)
    // and closes.
    let mut s = TcpStream::connect(server.addr()).await?;
    let mut hello = [0u8; GREETING_LEN];
    hello[..6].copy_from_slice(&MAGIC);
    hello[6..].copy_from_slice(&999u16.to_be_bytes());
    s.write_all(&hello).await?;
    let mut theirs = [0u8; GREETING_LEN];
    s.read_exact(&mut theirs).await?;
    let err = rpyc_protocol::handshake::check_greeting(&hello).expect_err("999 is not ours");
    assert!(err.to_string().contains("999"));
    assert_eq!(theirs, rpyc_protocol::handshake::greeting());
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await?;
    assert!(rest.is_empty(), "frames after a version mismatch");
    assert!(server.wait_for_log("version mismatch", Duration::from_secs(5)));
    assert_healthy(&server).await
}

#[tokio::test]
async fn clients_that_vanish_mid_frame_or_mid_call_do_no_harm() -> anyhow::Result<()> {
    let server = TestServer::start()?;
    // Mid-greeting.
    let mut s = TcpStream::connect(server.addr()).await?;
    s.write_all(&MAGIC[..3]).await?;
    drop(s);
    // Mid-frame: a length of 100, then 10 bytes, then gone.
    let mut raw = Raw::connect(&server).await?;
    raw.write.write_all(&100u32.to_be_bytes()).await?;
    raw.write.write_all(&[1; 10]).await?;
    drop(raw);
    // Mid-call: a long call, then gone.
    let mut raw = Raw::connect(&server).await?;
    raw.send(&Message::Request {
        id: RequestId(1),
        op: Op::Execute {
            code: "import time\ntime.sleep(5)".into(),
        },
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(raw);
    // Never reads its replies: many big results queued, then gone.
    let mut raw = Raw::connect(&server).await?;
    for i in 0..50 {
        raw.send(&Message::Request {
            id: RequestId(i),
            op: Op::Eval {
                expr: "b'y' * 1_000_000".into(),
                mode: rpyc_client::ReturnMode::Value,
            },
        })
        .await?;
    }
    assert_healthy(&server).await?;
    drop(raw);
    assert_healthy(&server).await
}

#[tokio::test]
async fn an_endless_loop_in_one_client_does_not_stall_the_others() -> anyhow::Result<()> {
    let server = TestServer::start()?;
    let spinner = Connection::builder(server.url())
        .timeout(Duration::from_secs(3))
        .connect()
        .await?;
    let spin = tokio::spawn(async move { spinner.execute("while True:\n    pass").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let other = connect(&server).await?;
    let started = std::time::Instant::now();
    for i in 0..20i64 {
        assert_eq!(other.eval::<i64>(&format!("{i} * 2")).await?, i * 2);
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "20 calls took {:?} beside a spinning client",
        started.elapsed()
    );
    let err = spin.await?.expect_err("the spinner times out");
    assert!(err.is_timeout());
    assert_healthy(&server).await
}

#[tokio::test]
async fn deep_recursion_and_memory_errors_leave_the_server_healthy() -> anyhow::Result<()> {
    let server = TestServer::start()?;
    let conn = connect(&server).await?;
    let err = conn
        .execute("def f(n):\n    return f(n + 1)\nf(0)")
        .await
        .expect_err("recursion");
    assert_eq!(
        err.remote_exception().map(|e| e.type_name.as_str()),
        Some("RecursionError")
    );
    let err = conn
        .execute("x = []\nx.append(x)\nimport copy\ny = repr([[[[[[[[x]]]]]]]])\nz = eval('[' * 200 + ']' * 200)")
        .await;
    assert!(
        err.is_ok() || err.as_ref().is_err_and(|e| e.is_remote()),
        "{err:?}"
    );
    // A self-referencing list cannot be copied by value: a clear error, not a crash.
    let err = conn
        .eval::<rpyc_client::Value>("x")
        .await
        .expect_err("cycle");
    assert!(err.to_string().contains("nesting deeper"), "{err}");
    let err = conn
        .execute("b = bytearray(1 << 62)")
        .await
        .expect_err("memory");
    assert_eq!(
        err.remote_exception().map(|e| e.type_name.as_str()),
        Some("MemoryError")
    );
    assert_healthy(&server).await
}

#[tokio::test]
async fn connection_limit_refuses_clearly() -> anyhow::Result<()> {
    let server = TestServer::builder()
        .arg("--max-connections")
        .arg("2")
        .start()?;
    let a = connect(&server).await?;
    let b = connect(&server).await?;
    let err = connect(&server).await.expect_err("third client refused");
    assert!(
        err.to_string().contains("limit of 2 connections"),
        "{err:#}"
    );
    a.close().await;
    drop(a);
    let mut ok = false;
    for _ in 0..100 {
        if let Ok(c) = connect(&server).await {
            assert_eq!(c.eval::<i64>("1").await?, 1);
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok, "a slot did not free up after a client left");
    assert_eq!(b.eval::<i64>("2").await?, 2);
    Ok(())
}
