//! Reconnecting (issue 3), against the fake server: `Fake::kill` and `Fake::restart` play a
//! server process that dies and comes back on the same port.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rpyc_protocol::{Message, Op};

use super::fake::Fake;
use crate::{Connection, Error, ReconnectEvent, ReconnectPolicy};

/// A policy with short waits, so failing rounds end quickly.
fn quick() -> ReconnectPolicy {
    ReconnectPolicy::new()
        .initial_backoff(Duration::from_millis(10))
        .max_backoff(Duration::from_millis(40))
        .max_attempts(3)
}

async fn connect_with(fake: &Fake, policy: ReconnectPolicy) -> Connection {
    Connection::builder(fake.addr())
        .timeout(Duration::from_secs(2))
        .reconnect(policy)
        .connect()
        .await
        .expect("connect")
}

/// Waits (at most 2 s) until the client has noticed that its connection closed.
async fn until_closed(conn: &Connection) {
    for _ in 0..200 {
        if conn.is_closed() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the client did not notice the closed connection");
}

fn is_setup(m: &Message, setup: &str) -> bool {
    matches!(m, Message::Request { op: Op::Execute { code }, .. } if code == setup)
}

fn is_eval(m: &Message, expr: &str) -> bool {
    matches!(m, Message::Request { op: Op::Eval { expr: e, .. }, .. } if e == expr)
}

#[tokio::test]
async fn without_a_policy_a_closed_connection_stays_closed() {
    let fake = Fake::start().await;
    let conn = super::connect(&fake).await;
    assert!(
        conn.eval_value("close")
            .await
            .expect_err("closed")
            .is_disconnected()
    );
    let err = conn.eval_value("1").await.expect_err("still closed");
    assert!(matches!(err, Error::Disconnected { .. }), "{err:?}");
    assert!(!err.to_string().contains("not sent again"), "{err}");
    assert_eq!(conn.reconnects(), 0);
}

#[tokio::test]
async fn the_next_call_reconnects_and_runs_the_setup_script() {
    let mut fake = Fake::start().await;
    let events: Arc<Mutex<Vec<ReconnectEvent>>> = Arc::default();
    let policy = quick().setup("x = 1").on_reconnect({
        let events = events.clone();
        move |e| events.lock().expect("lock").push(e.clone())
    });
    let conn = connect_with(&fake, policy).await;
    let ns = conn.namespace().await.expect("namespace");
    let sys = conn.modules().get("sys").await.expect("sys");
    let modules = conn.modules();

    // The call in flight when the connection drops fails and says it was not re-sent.
    let err = conn.eval_value("close").await.expect_err("dropped");
    assert!(matches!(err, Error::Disconnected { .. }), "{err:?}");
    assert!(err.to_string().contains("not sent again"), "{err}");
    assert!(conn.is_closed());

    // The next call reconnects, runs the setup script first, then itself.
    assert_eq!(conn.eval::<i64>("5").await.expect("reconnected"), 5);
    assert_eq!(conn.reconnects(), 1);
    assert!(!conn.is_closed());
    fake.wait_for(|m| is_eval(m, "close")).await;
    assert!(is_setup(&fake.next_seen().await, "x = 1"));
    assert!(is_eval(&fake.next_seen().await, "5"));
    {
        let events = events.lock().expect("lock");
        assert_eq!(events.len(), 1);
        let e = &events[0];
        assert_eq!((e.reconnects, e.attempts, e.forced), (1, 1, false));
        assert_eq!(e.peer, fake.addr());
        assert_eq!(e.server.server, "fake 0.0.0");
    }

    // Objects from the old connection are stale, at once; fresh ones work.
    let started = Instant::now();
    let err = ns.getitem("x").await.expect_err("stale");
    assert!(err.is_stale_reference() && err.is_disconnected(), "{err:?}");
    let text = err.to_string();
    assert!(text.contains(&ns.netref().to_string()), "{text}");
    assert!(text.contains("previous connection"), "{text}");
    assert!(
        sys.getattr("path")
            .await
            .expect_err("stale")
            .is_stale_reference()
    );
    assert!(started.elapsed() < Duration::from_millis(100));
    let fresh = conn.namespace().await.expect("fresh namespace");
    assert_ne!(fresh.netref().id, ns.netref().id);
    fresh.getitem("x").await.expect("fresh object works");
    // A `RemoteModules` taken before the drop imports on the new connection.
    modules
        .get("os")
        .await
        .expect("modules follow the reconnect");
    // The object's connection is the reconnecting handle.
    assert_eq!(ns.connection().reconnects(), 1);
}

#[tokio::test]
async fn calls_in_flight_fail_and_are_never_sent_again() {
    let mut fake = Fake::start().await;
    let conn = connect_with(&fake, quick()).await;
    let pending = tokio::spawn({
        let conn = conn.clone();
        async move { conn.eval_value("sleep").await }
    });
    fake.wait_for(|m| is_eval(m, "sleep")).await;
    fake.kill();
    let err = pending.await.expect("join").expect_err("in flight");
    assert!(matches!(err, Error::Disconnected { .. }), "{err:?}");
    fake.restart().await;
    assert_eq!(conn.eval::<i64>("7").await.expect("reconnected"), 7);
    conn.ping().await.expect("ping");
    let after = fake.until_ping().await;
    assert!(
        !after.iter().any(|m| is_eval(m, "sleep")),
        "the in-flight call was sent again: {after:?}"
    );
    assert_eq!(conn.reconnects(), 1);
}

#[tokio::test]
async fn attempts_are_bounded_then_a_later_call_tries_again() {
    let fake = Fake::start().await;
    let policy = quick()
        .initial_backoff(Duration::from_millis(20))
        .multiplier(2.0)
        .max_backoff(Duration::from_secs(1));
    let conn = connect_with(&fake, policy).await;
    fake.kill();
    until_closed(&conn).await;

    let started = Instant::now();
    let err = conn.eval_value("1").await.expect_err("server down");
    let took = started.elapsed();
    match &err {
        Error::ReconnectFailed { attempts, last, .. } => {
            assert_eq!(*attempts, 3);
            assert!(matches!(**last, Error::Io(_)), "{last:?}");
        }
        other => panic!("expected ReconnectFailed, got {other:?}"),
    }
    assert!(err.is_disconnected());
    assert!(err.to_string().contains("after 3 attempt(s)"), "{err}");
    // Waits of 20 ms and 40 ms between the three attempts.
    assert!(
        took >= Duration::from_millis(60) && took < Duration::from_secs(2),
        "{took:?}"
    );
    assert_eq!(conn.reconnects(), 0);

    fake.restart().await;
    assert_eq!(conn.eval::<i64>("3").await.expect("back"), 3);
    assert_eq!(conn.reconnects(), 1);
}

#[tokio::test]
async fn concurrent_callers_share_one_reconnect() {
    let mut fake = Fake::start().await;
    let conn = connect_with(&fake, quick().setup("setup()")).await;
    fake.kill();
    until_closed(&conn).await;
    fake.restart().await;
    let calls: Vec<_> = (0..8i64)
        .map(|i| {
            let conn = conn.clone();
            tokio::spawn(async move { conn.eval::<i64>(&i.to_string()).await })
        })
        .collect();
    for (i, call) in (0..8i64).zip(calls) {
        assert_eq!(call.await.expect("join").expect("call"), i);
    }
    assert_eq!(conn.reconnects(), 1);
    conn.ping().await.expect("ping");
    let seen = fake.until_ping().await;
    assert_eq!(seen.iter().filter(|m| is_setup(m, "setup()")).count(), 1);
}

#[tokio::test]
async fn a_setup_script_that_raises_stops_reconnecting_at_once() {
    let fake = Fake::start().await;
    let conn = connect_with(&fake, quick().max_attempts(5).setup("raise")).await;
    assert!(conn.eval_value("close").await.is_err());
    let err = conn.eval_value("1").await.expect_err("setup raised");
    match &err {
        Error::ReconnectFailed { attempts, last, .. } => {
            assert_eq!(*attempts, 1);
            assert!(
                last.remote_exception()
                    .is_some_and(|e| e.type_name == "ZeroDivisionError"),
                "{last:?}"
            );
        }
        other => panic!("expected ReconnectFailed, got {other:?}"),
    }
    assert!(err.to_string().contains("ZeroDivisionError"), "{err}");
}

#[tokio::test]
async fn a_forced_reconnect_replaces_an_open_connection() {
    let mut fake = Fake::start().await;
    // No policy: `reconnect()` still works, with one attempt.
    let conn = super::connect(&fake).await;
    let ns = conn.namespace().await.expect("namespace");
    let first = conn.server_info();
    let pending = tokio::spawn({
        let conn = conn.clone();
        async move { conn.eval_value("sleep").await }
    });
    fake.wait_for(|m| is_eval(m, "sleep")).await;
    conn.reconnect().await.expect("reconnect");
    assert_eq!(conn.reconnects(), 1);
    assert_eq!(conn.server_info().server, first.server);
    // The old connection said goodbye; its call in flight and its objects fail.
    fake.wait_for(|m| matches!(m, Message::Goodbye { .. }))
        .await;
    let err = pending
        .await
        .expect("join")
        .expect_err("old connection closed");
    assert!(err.is_disconnected(), "{err:?}");
    assert!(ns.len().await.expect_err("stale").is_stale_reference());
    assert_eq!(conn.eval::<i64>("4").await.expect("new connection"), 4);

    // After `close`, a policy does not reconnect by itself, but `reconnect()` does.
    let conn = connect_with(&fake, quick()).await;
    conn.close().await;
    let err = conn.eval_value("1").await.expect_err("closed");
    assert!(err.to_string().contains("closed by the client"), "{err}");
    assert_eq!(conn.reconnects(), 0);
    conn.reconnect().await.expect("reconnect after close");
    assert_eq!(conn.eval::<i64>("2").await.expect("open again"), 2);

    // A forced reconnect to a dead server fails and leaves the connection as it was.
    fake.kill();
    let err = conn.reconnect().await.expect_err("server down");
    assert!(
        matches!(err, Error::ReconnectFailed { attempts: 3, .. }),
        "{err:?}"
    );

    // A failed `reconnect()` after `close` leaves the connection closed for good.
    conn.close().await;
    assert!(conn.reconnect().await.is_err());
    fake.restart().await;
    let err = conn.eval_value("1").await.expect_err("still closed");
    assert!(matches!(err, Error::Disconnected { .. }), "{err:?}");
    assert!(!err.to_string().contains("reconnects"), "{err}");
    assert_eq!(conn.reconnects(), 1);
}

#[test]
fn the_backoff_grows_to_its_cap() {
    let p = ReconnectPolicy::new()
        .initial_backoff(Duration::from_millis(100))
        .multiplier(3.0)
        .max_backoff(Duration::from_secs(1));
    let ms: Vec<u128> = (1..=6).map(|n| p.delay_before(n).as_millis()).collect();
    assert_eq!(ms, [0, 100, 300, 900, 1000, 1000]);
    assert_eq!(p.delay_before(u32::MAX), Duration::from_secs(1));
    // Nonsense settings are clamped.
    let p = ReconnectPolicy::new().multiplier(f64::NAN).max_attempts(0);
    assert_eq!(p.delay_before(5), Duration::from_millis(100));
    assert!(format!("{p:?}").contains("max_attempts: 1"));
}

#[test]
fn the_blocking_client_reconnects_too() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let fake = rt.block_on(Fake::start());
    let conn = crate::blocking::Connection::builder(fake.addr())
        .timeout(Duration::from_secs(2))
        .reconnect(quick())
        .connect()
        .expect("connect");
    let ns = conn.namespace().expect("namespace");
    assert!(
        conn.eval_value("close")
            .expect_err("dropped")
            .is_disconnected()
    );
    assert_eq!(conn.eval::<i64>("6").expect("reconnected"), 6);
    assert_eq!(conn.reconnects(), 1);
    assert!(ns.len().expect_err("stale").is_stale_reference());
    conn.reconnect().expect("forced");
    assert_eq!(conn.reconnects(), 2);
    assert_eq!(conn.server_info().server, "fake 0.0.0");
}
