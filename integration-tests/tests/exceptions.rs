//! Remote exceptions and error paths.

use std::time::{Duration, Instant};

use rpyc_client::{Error, NetRefId, Op, ServerError};
use rpyc_integration_tests::TestServer;

use crate::support::{assert_healthy, connect};

#[tokio::test]
async fn remote_exception_carries_type_message_and_traceback() -> anyhow::Result<()> {
    let server = TestServer::start()?;
    let conn = connect(&server).await?;
    conn.execute("x = 1\ny = 0").await?;
    let err = conn.execute("z = x/y").await.expect_err("division by zero");
    let exc = err.remote_exception().expect("a remote exception");
    assert_eq!(exc.type_name, "ZeroDivisionError");
    assert_eq!(exc.message, "division by zero");
    assert!(exc.is_instance("ArithmeticError"));
    assert!(exc.is_instance("Exception"));
    assert!(!exc.is_instance("OSError"));
    assert!(
        exc.traceback
            .starts_with("Traceback (most recent call last):"),
        "{}",
        exc.traceback
    );
    assert!(
        exc.traceback.contains("File \"<string>\", line 1"),
        "{}",
        exc.traceback
    );
    assert!(
        exc.traceback
            .trim_end()
            .ends_with("ZeroDivisionError: division by zero")
    );
    let shown = err.to_string();
    assert!(
        shown.contains("Traceback (most recent call last)") && shown.contains("ZeroDivisionError"),
        "{shown}"
    );
    // The server logs it with its traceback, as stock RPyC does.
    assert!(
        server.wait_for_log(
            "ZeroDivisionError: division by zero",
            Duration::from_secs(5)
        ),
        "{}",
        server.stderr()
    );

    // Frames of the client's own functions appear in the traceback; qualified type names.
    conn.execute("import json\ndef parse(s):\n    return json.loads(s)")
        .await?;
    let err = conn
        .eval::<i64>("parse('{bad')")
        .await
        .expect_err("bad json");
    let exc = err.remote_exception().expect("remote");
    assert_eq!(exc.type_name, "json.decoder.JSONDecodeError");
    assert!(exc.is_instance("ValueError"));
    assert!(exc.traceback.contains("in parse"), "{}", exc.traceback);
    // The connection goes on.
    assert_eq!(conn.eval::<i64>("x + 1").await?, 2);
    Ok(())
}

/// The traceback text is what Python's `traceback.format_exception` prints for the same
/// exception: plain raises in client code, chained exceptions, library frames with source lines
/// (and, on 3.11+, column markers), empty messages, exception classes of the client's own.
#[tokio::test]
async fn traceback_text_is_what_python_prints() -> anyhow::Result<()> {
    let server = TestServer::start()?;
    let conn = connect(&server).await?;
    conn.execute(
        "import json, traceback\n\
         class Mine(Exception):\n\
         \x20   pass\n\
         def boom(kind):\n\
         \x20   if kind == 0: return 1 / 0\n\
         \x20   if kind == 1:\n\
         \x20       try: {}['k']\n\
         \x20       except KeyError as k: raise ValueError('v') from k\n\
         \x20   if kind == 2:\n\
         \x20       try: [][1]\n\
         \x20       except IndexError: raise Mine('during')\n\
         \x20   if kind == 3: return json.loads('{bad')\n\
         \x20   if kind == 4: raise KeyError()\n\
         \x20   if kind == 5: raise Mine()\n\
         \x20   if kind == 6: return int('x')\n\
         def expected(kind):\n\
         \x20   try:\n\
         \x20       boom(kind)\n\
         \x20   except Exception as e:\n\
         \x20       return ''.join(traceback.format_exception(type(e), e, e.__traceback__.tb_next))",
    )
    .await?;
    let boom = conn.eval_object("boom").await?;
    let expected = conn.eval_object("expected").await?;
    for kind in 0..7i64 {
        let err = boom.call((kind,)).await.expect_err("raises");
        let exc = err.remote_exception().expect("a remote exception");
        let want: String = expected.call_as((kind,)).await?;
        assert_eq!(exc.traceback, want, "kind {kind}");
    }
    Ok(())
}

#[tokio::test]
async fn system_exit_and_keyboard_interrupt_are_errors_not_exits() -> anyhow::Result<()> {
    let server = TestServer::start()?;
    let conn = connect(&server).await?;
    for (code, type_name) in [
        ("import sys\nsys.exit(3)", "SystemExit"),
        ("raise SystemExit", "SystemExit"),
        ("exit()", "SystemExit"),
        ("raise KeyboardInterrupt", "KeyboardInterrupt"),
        ("raise GeneratorExit", "GeneratorExit"),
    ] {
        let err = conn.execute(code).await.expect_err(code);
        assert_eq!(
            err.remote_exception().map(|e| e.type_name.as_str()),
            Some(type_name),
            "{code}: {err}"
        );
        assert_eq!(
            conn.eval::<i64>("6*7").await?,
            42,
            "connection unusable after {code}"
        );
    }
    assert_healthy(&server).await?;
    Ok(())
}

#[tokio::test]
async fn syntax_errors_name_the_problem() -> anyhow::Result<()> {
    let server = TestServer::start()?;
    let conn = connect(&server).await?;
    let err = conn
        .execute("def broken(:\n    pass")
        .await
        .expect_err("syntax");
    let exc = err.remote_exception().expect("remote");
    assert_eq!(exc.type_name, "SyntaxError");
    assert!(exc.traceback.contains("line 1"), "{}", exc.traceback);
    let err = conn.eval::<i64>("1 +").await.expect_err("syntax");
    assert_eq!(
        err.remote_exception().map(|e| e.type_name.as_str()),
        Some("SyntaxError")
    );
    let err = conn
        .eval::<i64>("x = 1")
        .await
        .expect_err("a statement is not an expression");
    assert_eq!(
        err.remote_exception().map(|e| e.type_name.as_str()),
        Some("SyntaxError")
    );
    let err = conn.eval::<i64>("undefined_name").await.expect_err("name");
    let exc = err.remote_exception().expect("remote");
    assert_eq!(exc.type_name, "NameError");
    assert!(exc.message.contains("undefined_name"));
    Ok(())
}

#[tokio::test]
async fn unknown_and_released_references_are_clear_errors() -> anyhow::Result<()> {
    let server = TestServer::start()?;
    let conn = connect(&server).await?;
    let err = conn
        .request(Op::Len {
            obj: NetRefId(987_654),
        })
        .await
        .expect_err("never issued");
    assert!(
        matches!(
            err,
            Error::Server(ServerError::UnknownReference(NetRefId(987_654)))
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("987654"), "{err}");
    // A reference released by the client is gone on the server.
    let list = conn
        .request(Op::Eval {
            expr: "[1]".into(),
            mode: rpyc_client::ReturnMode::Ref,
        })
        .await?;
    let id = list.as_ref().expect("a reference").id;
    conn.request(Op::Len { obj: id }).await?;
    let released = conn.adopt(list.as_ref().expect("a reference").clone());
    drop(released);
    let mut gone = false;
    for _ in 0..100 {
        match conn.request(Op::Len { obj: id }).await {
            Err(Error::Server(ServerError::UnknownReference(_))) => {
                gone = true;
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    assert!(gone, "released reference still answers");
    Ok(())
}

#[tokio::test]
async fn killed_server_gives_disconnected_never_a_hang() -> anyhow::Result<()> {
    let mut server = TestServer::start()?;
    let conn = connect(&server).await?;
    let obj = conn.eval_object("[1, 2, 3]").await?;
    let pending = tokio::spawn({
        let conn = conn.clone();
        async move { conn.eval::<i64>("__import__('time').sleep(30) or 1").await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let killed_at = Instant::now();
    server.kill();
    let err = pending.await?.expect_err("the server died mid-call");
    assert!(err.is_disconnected(), "{err}");
    assert!(
        killed_at.elapsed() < Duration::from_secs(5),
        "noticed after {:?}",
        killed_at.elapsed()
    );
    let err = obj.len().await.expect_err("stale object");
    assert!(err.is_disconnected(), "{err}");
    let err = conn.ping().await.expect_err("dead connection");
    assert!(err.is_disconnected(), "{err}");
    Ok(())
}
