//! Tests against a fake server (see `tests/fake.rs`); end-to-end tests against the real
//! `rpyc-classic` live in the `integration-tests` package.

mod fake;
mod reconnect;

use std::time::Duration;

use rpyc_protocol::{
    Args, Message, NetRefId, Op, ProtocolError, RequestId, ReturnMode, ServerError, Value,
};

use crate::{Connection, Error};
use fake::{Behave, Fake};

const SHORT: Duration = Duration::from_millis(50);

async fn connect(fake: &Fake) -> Connection {
    Connection::connect(fake.addr()).await.expect("connect")
}

/// The id of the request the server saw for `expr`.
async fn request_id_of(fake: &mut Fake, expr: &str) -> RequestId {
    match fake
        .wait_for(
            |m| matches!(m, Message::Request { op: Op::Eval { expr: e, .. }, .. } if e == expr),
        )
        .await
    {
        Message::Request { id, .. } => id,
        _ => unreachable!(),
    }
}

#[tokio::test]
async fn eval_execute_and_typed_results() {
    let fake = Fake::start().await;
    let conn = connect(&fake).await;
    assert_eq!(conn.server_info().server, "fake 0.0.0");
    assert_eq!(conn.peer_addr(), fake.addr());
    conn.execute("x = 1").await.expect("execute");
    assert_eq!(conn.eval::<i64>("1+1").await.expect("eval"), 2);
    assert_eq!(conn.eval::<String>("'abc'").await.expect("eval"), "abc");
    assert_eq!(conn.eval_value("41").await.expect("eval"), Value::Int(41));
    assert_eq!(
        conn.eval::<u128>("bigint").await.expect("bigint"),
        123_456_789_012_345_678_901_234_567_890
    );

    let err = conn.eval::<i64>("'abc'").await.expect_err("mismatch");
    assert!(matches!(err, Error::Decode(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        "cannot convert the remote value: invalid type: string \"abc\", expected i64"
    );
    assert!(conn.ping().await.expect("ping") < Duration::from_secs(1));
    assert!(!conn.is_closed());
    assert!(format!("{conn:?}").contains("fake 0.0.0"));
}

#[tokio::test]
async fn remote_exceptions_carry_the_traceback() {
    let fake = Fake::start().await;
    let conn = connect(&fake).await;
    let err = conn.eval_value("raise").await.expect_err("raises");
    assert!(err.is_remote() && !err.is_timeout() && !err.is_disconnected());
    let exc = err.remote_exception().expect("remote exception");
    assert_eq!(exc.type_name, "ZeroDivisionError");
    assert!(exc.is_instance("ArithmeticError"));
    let text = err.to_string();
    assert!(
        text.starts_with("remote Python raised ZeroDivisionError; remote traceback:\nTraceback"),
        "{text}"
    );
    assert!(
        text.ends_with("ZeroDivisionError: division by zero"),
        "{text}"
    );
    // The connection is fine afterwards.
    assert_eq!(conn.eval::<i64>("3").await.expect("eval"), 3);
}

#[tokio::test]
async fn a_timeout_cancels_the_request_and_the_connection_lives_on() {
    let mut fake = Fake::start().await;
    let conn = Connection::builder(fake.addr())
        .timeout(SHORT)
        .connect()
        .await
        .expect("connect");
    assert_eq!(conn.request_timeout(), SHORT);
    let err = conn.eval_value("sleep").await.expect_err("times out");
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(
        err.to_string(),
        "request timed out after 50ms; the server was asked to cancel it"
    );
    let id = request_id_of(&mut fake, "sleep").await;
    assert_eq!(fake.next_seen().await, Message::Cancel { id });
    assert_eq!(conn.eval::<i64>("5").await.expect("still usable"), 5);

    // A per-request timeout overrides the default.
    let err = conn
        .request_with_timeout(
            Op::Eval {
                expr: "sleep".into(),
                mode: ReturnMode::Value,
            },
            Duration::from_millis(10),
        )
        .await
        .expect_err("times out");
    assert!(matches!(err, Error::Timeout { timeout } if timeout == Duration::from_millis(10)));
}

#[tokio::test]
async fn a_shorter_deadline_behind_a_longer_one_still_times_out_on_time() {
    let mut fake = Fake::start().await;
    let conn = connect(&fake).await;
    let sleep = || Op::Eval {
        expr: "sleep".into(),
        mode: ReturnMode::Value,
    };
    // Pending with the default (long) timeout: the deadline watcher sleeps until then...
    let long = tokio::spawn({
        let conn = conn.clone();
        async move { conn.request(sleep()).await }
    });
    let first = request_id_of(&mut fake, "sleep").await;
    // ...and must wake earlier for these.
    for timeout in [Duration::from_millis(30), Duration::ZERO] {
        let started = std::time::Instant::now();
        let err = conn
            .request_with_timeout(sleep(), timeout)
            .await
            .expect_err("times out");
        assert!(
            matches!(err, Error::Timeout { timeout: t } if t == timeout),
            "{err:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        let id = request_id_of(&mut fake, "sleep").await;
        assert_eq!(fake.next_seen().await, Message::Cancel { id });
    }
    assert_eq!(conn.eval::<i64>("5").await.expect("still usable"), 5);
    assert!(!long.is_finished());
    long.abort();
    assert_eq!(
        fake.wait_for(|m| matches!(m, Message::Cancel { .. })).await,
        Message::Cancel { id: first }
    );
}

#[tokio::test]
async fn dropping_a_call_cancels_it() {
    let mut fake = Fake::start().await;
    let conn = connect(&fake).await;
    let abandoned = tokio::time::timeout(SHORT, conn.eval_value("sleep")).await;
    assert!(abandoned.is_err(), "the call should still be running");
    let id = request_id_of(&mut fake, "sleep").await;
    assert_eq!(fake.next_seen().await, Message::Cancel { id });
    conn.ping().await.expect("ping");
}

#[tokio::test]
async fn a_late_reply_nobody_waits_for_is_released() {
    let mut fake = Fake::start().await;
    let conn = Connection::builder(fake.addr())
        .timeout(Duration::from_millis(20))
        .connect()
        .await
        .expect("connect");
    let err = conn.eval_object("slow_ref").await.expect_err("times out");
    assert!(err.is_timeout());
    let message = fake
        .wait_for(|m| matches!(m, Message::Release { .. }))
        .await;
    assert!(matches!(message, Message::Release { ids } if ids.len() == 1));
}

#[tokio::test]
async fn a_lost_connection_fails_pending_and_later_calls() {
    let fake = Fake::start().await;
    let conn = connect(&fake).await;
    let obj = conn.eval_object("obj").await.expect("object");
    let pending = tokio::spawn({
        let conn = conn.clone();
        async move { conn.eval_value("sleep").await }
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    let err = conn.eval_value("close").await.expect_err("closed");
    assert!(err.is_disconnected(), "{err:?}");
    assert!(
        err.to_string()
            .starts_with(&format!("connection to {} closed: ", fake.addr())),
        "{err}"
    );
    let err = pending
        .await
        .expect("join")
        .expect_err("pending call fails");
    assert!(err.is_disconnected(), "{err:?}");
    assert!(conn.is_closed());

    let started = std::time::Instant::now();
    let err = conn.eval::<i64>("1").await.expect_err("later call fails");
    assert!(err.is_disconnected());
    let err = obj.repr().await.expect_err("stale object");
    assert!(err.is_disconnected());
    assert!(err.to_string().contains("is no longer valid"), "{err}");
    assert!(err.to_string().contains(&obj.netref().to_string()), "{err}");
    assert!(conn.ping().await.expect_err("ping").is_disconnected());
    assert!(conn.modules().get("sys").await.is_err());
    assert!(started.elapsed() < Duration::from_millis(100));
    drop(obj); // Releasing on a closed connection is silent.
}

#[tokio::test]
async fn the_server_saying_goodbye_closes_the_connection() {
    let fake = Fake::start().await;
    let conn = connect(&fake).await;
    let err = conn.eval_value("goodbye").await.expect_err("goodbye");
    assert!(err.to_string().contains("server shutting down"), "{err}");
    let err = conn.eval_value("1").await.expect_err("closed");
    assert!(
        err.to_string()
            .contains("the server said goodbye: server shutting down"),
        "{err}"
    );
}

#[tokio::test]
async fn close_says_goodbye() {
    let mut fake = Fake::start().await;
    let conn = connect(&fake).await;
    let ns = conn.namespace().await.expect("namespace");
    conn.close().await;
    assert!(matches!(
        fake.wait_for(|m| matches!(m, Message::Goodbye { .. }))
            .await,
        Message::Goodbye { .. }
    ));
    assert!(conn.is_closed());
    let err = conn.eval_value("1").await.expect_err("closed");
    assert!(err.to_string().contains("closed by the client"), "{err}");
    assert!(ns.getitem("x").await.expect_err("closed").is_disconnected());
    conn.close().await; // twice is fine
}

#[tokio::test]
async fn the_last_handle_releases_a_remote_object() {
    let mut fake = Fake::start().await;
    let conn = connect(&fake).await;
    let obj = conn.eval_object("obj").await.expect("object");
    assert_eq!(obj.type_name(), "builtins.object");
    let id = obj.netref().id;
    let clone = obj.clone();
    drop(obj);
    conn.ping().await.expect("ping");
    let seen = fake.until_ping().await;
    assert!(
        !seen.iter().any(|m| matches!(m, Message::Release { .. })),
        "{seen:?}"
    );
    drop(clone);
    conn.ping().await.expect("ping");
    let seen = fake.until_ping().await;
    assert!(
        seen.contains(&Message::Release { ids: vec![id] }),
        "{seen:?}"
    );
}

#[tokio::test]
async fn an_object_passed_by_value_is_released_after_the_call() {
    let mut fake = Fake::start().await;
    let conn = connect(&fake).await;
    let func = conn.eval_object("func").await.expect("func");
    let arg = conn.eval_object("arg").await.expect("arg");
    let arg_id = arg.netref().id;
    func.call((arg, 1)).await.expect("call");
    let call = fake
        .wait_for(|m| {
            matches!(
                m,
                Message::Request {
                    op: Op::Call { .. },
                    ..
                }
            )
        })
        .await;
    let Message::Request {
        op: Op::Call { args, .. },
        ..
    } = call
    else {
        unreachable!()
    };
    assert!(matches!(&args.positional[0], Value::Ref(r) if r.id == arg_id));
    assert_eq!(
        fake.next_seen().await,
        Message::Release { ids: vec![arg_id] }
    );
}

#[tokio::test]
async fn references_from_another_connection_are_refused() {
    let fake = Fake::start().await;
    let one = connect(&fake).await;
    let two = connect(&fake).await;
    let func = one.eval_object("func").await.expect("func");
    let foreign = two.eval_object("obj").await.expect("obj");
    let err = func.call((&foreign,)).await.expect_err("foreign");
    assert!(matches!(err, Error::ForeignReference { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("does not belong to the connection"),
        "{err}"
    );
    let err = func
        .setitem("k", vec![Value::from(&foreign)])
        .await
        .expect_err("nested");
    assert!(matches!(err, Error::ForeignReference { .. }), "{err:?}");
    // Own references pass, by reference or by value.
    let own = one.eval_object("obj").await.expect("obj");
    func.call((&own, own.clone())).await.expect("own reference");
}

#[tokio::test]
async fn modules_namespace_and_builtins_are_cached() {
    let mut fake = Fake::start().await;
    let conn = connect(&fake).await;
    let a = conn.modules().get("os.path").await.expect("import");
    let b = conn.modules().get("os.path").await.expect("import");
    assert_eq!(a.netref(), b.netref());
    drop((a, b));
    let c = conn.modules().get("os.path").await.expect("import");
    let ns1 = conn.namespace().await.expect("ns");
    let ns2 = conn.namespace().await.expect("ns");
    assert_eq!(ns1.netref(), ns2.netref());
    conn.builtins().await.expect("builtins");
    conn.builtins().await.expect("builtins");
    drop((c, ns1, ns2));
    conn.ping().await.expect("ping");
    let seen = fake.until_ping().await;
    let count = |f: fn(&Op) -> bool| {
        seen.iter()
            .filter(|m| matches!(m, Message::Request { op, .. } if f(op)))
            .count()
    };
    assert_eq!(count(|op| matches!(op, Op::Import { .. })), 1, "{seen:?}");
    assert_eq!(count(|op| matches!(op, Op::Namespace)), 1, "{seen:?}");
    assert_eq!(count(|op| matches!(op, Op::Builtins)), 1, "{seen:?}");
    assert!(
        !seen.iter().any(|m| matches!(m, Message::Release { .. })),
        "cached objects stay: {seen:?}"
    );
}

#[tokio::test]
async fn remote_object_operations_send_the_right_ops() {
    let mut fake = Fake::start().await;
    let conn = connect(&fake).await;
    let obj = conn.eval_object("obj").await.expect("object");
    let id = obj.netref().id;

    assert_eq!(
        obj.getattr_as::<String>("name").await.expect("getattr"),
        "name"
    );
    let attr = obj.getattr("name").await.expect("getattr");
    assert_eq!(attr.type_name(), "builtins.object");
    obj.setattr("name", 5).await.expect("setattr");
    obj.delattr("name").await.expect("delattr");
    let (args, kwargs): (Vec<i64>, std::collections::BTreeMap<String, String>) = obj
        .call_with_as((1, 2), [("sep", "-")])
        .await
        .expect("call");
    assert_eq!(args, vec![1, 2]);
    assert_eq!(kwargs.get("sep").map(String::as_str), Some("-"));
    let (args, _): (Vec<String>, std::collections::BTreeMap<String, String>) =
        obj.call_method_as("m", ("x",)).await.expect("call_method");
    assert_eq!(args, vec!["x"]);
    obj.call(()).await.expect("call");
    obj.call_method_with("m", (), vec![("k", 1)])
        .await
        .expect("call_method_with");
    assert_eq!(obj.getitem_as::<i64>(3).await.expect("getitem"), 3);
    obj.getitem("k").await.expect("getitem");
    obj.setitem("k", 1.5).await.expect("setitem");
    obj.delitem("k").await.expect("delitem");
    assert_eq!(obj.len().await.expect("len"), 3);
    assert!(obj.contains(1).await.expect("contains"));
    assert_eq!(obj.repr().await.expect("repr"), "<fake>");
    assert_eq!(obj.str().await.expect("str"), "fake");
    assert_eq!(obj.dir().await.expect("dir"), vec!["a", "b"]);
    assert!(obj.eq(1).await.expect("eq"));
    assert!(obj.compare(crate::CompareOp::Lt, 1).await.expect("lt"));
    assert_eq!(obj.hash().await.expect("hash"), 42);
    assert_eq!(obj.get::<Vec<i64>>().await.expect("get"), vec![7]);
    assert_eq!(
        obj.get_value().await.expect("get_value"),
        Value::List(vec![Value::Int(7)])
    );
    assert_eq!(obj.connection().peer_addr(), conn.peer_addr());
    assert_eq!(obj.to_string(), format!("<remote builtins.object {id}>"));

    conn.ping().await.expect("ping");
    let ops: Vec<Op> = fake
        .until_ping()
        .await
        .into_iter()
        .filter_map(|m| match m {
            Message::Request { op, .. } => Some(op),
            _ => None,
        })
        .collect();
    assert!(ops.contains(&Op::SetAttr {
        obj: id,
        name: "name".into(),
        value: Value::Int(5)
    }));
    assert!(ops.contains(&Op::Len { obj: id }));
    assert!(ops.contains(&Op::Compare {
        obj: id,
        op: crate::CompareOp::Eq,
        other: Value::Int(1)
    }));
    assert!(
        ops.iter().any(
            |op| matches!(op, Op::CallMethod { name, mode: ReturnMode::Ref, .. } if name == "m")
        )
    );
}

#[tokio::test]
async fn iteration_is_batched() {
    let mut fake = Fake::start().await;
    let conn = Connection::builder(fake.addr())
        .batch_size(2)
        .connect()
        .await
        .expect("connect");
    let range = conn.eval_object("range").await.expect("range");
    let items: Vec<i64> = range.iter_as().collect_all().await.expect("iterate");
    assert_eq!(items, vec![0, 1, 2, 3, 4]);
    let objects = range.iter().collect_all().await.expect("iterate");
    assert_eq!(objects.len(), 5);
    assert!(objects.iter().all(|o| o.type_name() == "builtins.int"));
    drop(objects);

    conn.ping().await.expect("ping");
    let seen = fake.until_ping().await;
    let iters = seen
        .iter()
        .filter(|m| {
            matches!(
                m,
                Message::Request {
                    op: Op::Iter { batch: 2, .. },
                    ..
                }
            )
        })
        .count();
    let nexts = seen
        .iter()
        .filter(|m| {
            matches!(
                m,
                Message::Request {
                    op: Op::Next { batch: 2, .. },
                    ..
                }
            )
        })
        .count();
    assert_eq!((iters, nexts), (2, 4), "{seen:?}");
    // Two iterators and five items released.
    let released: usize = seen
        .iter()
        .map(|m| match m {
            Message::Release { ids } => ids.len(),
            _ => 0,
        })
        .sum();
    assert_eq!(released, 7, "{seen:?}");

    // With a big batch, everything comes with the first reply and there is no iterator.
    let conn = connect(&fake).await;
    let range = conn.eval_object("range").await.expect("range");
    let mut iter = range.iter_as::<i64>();
    let mut n = 0;
    while let Some(item) = iter.next().await {
        assert_eq!(item.expect("item"), n);
        n += 1;
    }
    assert_eq!(n, 5);
    assert!(iter.next().await.is_none());
}

#[tokio::test]
async fn dropping_an_iterator_releases_it_and_its_buffered_items() {
    let mut fake = Fake::start().await;
    let conn = Connection::builder(fake.addr())
        .batch_size(2)
        .connect()
        .await
        .expect("connect");
    let range = conn.eval_object("range").await.expect("range");
    let mut iter = range.iter();
    let first = iter.next().await.expect("some").expect("ok");
    drop(iter);
    conn.ping().await.expect("ping");
    let seen = fake.until_ping().await;
    let iterator = seen.iter().find_map(|m| match m {
        Message::Request {
            op: Op::Iter { .. },
            ..
        } => Some(()),
        _ => None,
    });
    assert!(iterator.is_some());
    let released: Vec<NetRefId> = seen
        .iter()
        .flat_map(|m| match m {
            Message::Release { ids } => ids.clone(),
            _ => Vec::new(),
        })
        .collect();
    assert_eq!(
        released.len(),
        2,
        "the iterator and the second item: {seen:?}"
    );
    assert!(!released.contains(&first.netref().id));
}

#[tokio::test]
async fn pipelined_calls_from_many_tasks() {
    let fake = Fake::start().await;
    let conn = connect(&fake).await;
    let tasks: Vec<_> = (0..64i64)
        .map(|i| {
            let conn = conn.clone();
            tokio::spawn(async move { conn.eval::<i64>(&i.to_string()).await })
        })
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        assert_eq!(task.await.expect("join").expect("eval"), i as i64);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_and_small_requests_from_many_tasks_keep_their_order() {
    // Frames larger than the socket buffers are left partly written for the writer task, and
    // requests made meanwhile queue behind them; every reply must match its request.
    let fake = Fake::start().await;
    let conn = connect(&fake).await;
    let tasks: Vec<_> = (0..16u8)
        .map(|t| {
            let conn = conn.clone();
            tokio::spawn(async move {
                for i in 0..8u8 {
                    let key = if (t + i) % 5 == 0 {
                        Value::bytes(vec![t ^ i; 4 << 20])
                    } else {
                        Value::Int(i64::from(t) * 100 + i64::from(i))
                    };
                    let echoed = conn
                        .request(Op::GetItem {
                            obj: NetRefId(1),
                            key: key.clone(),
                            mode: ReturnMode::Value,
                        })
                        .await
                        .expect("getitem");
                    assert!(echoed == key, "task {t}, call {i}: wrong reply");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("join");
    }
    assert_eq!(conn.eval::<i64>("5").await.expect("eval"), 5);
}

/// A byte string of `n` bytes that differs from one `seed` to the next.
fn pattern(n: usize, seed: u8) -> bytes::Bytes {
    (0..n)
        .map(|i| {
            (i as u8)
                .wrapping_mul(31)
                .wrapping_add(seed ^ (i >> 9) as u8)
        })
        .collect()
}

/// The arguments of upload `call` of `task`: large byte strings (64 KiB and up, the largest
/// around 1 MiB) mixed with small ones, positional and keyword, the first one its tag.
fn upload_args(task: u8, call: u8) -> Args {
    let min = rpyc_protocol::codec::SHARE_MIN_BYTES;
    let seed = task.wrapping_mul(16).wrapping_add(call);
    let sizes = match (task + call) % 4 {
        0 => vec![min, 10, (1 << 20) + 7],
        1 => vec![min - 1, 0, min + 1],
        2 => vec![1 << 20, (1 << 20) - 3, 3],
        _ => vec![5, 6],
    };
    let mut positional = vec![Value::Int(i64::from(task) * 1000 + i64::from(call))];
    positional.extend(
        sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| Value::bytes(pattern(n, seed.wrapping_add(i as u8)))),
    );
    Args {
        positional,
        keyword: vec![
            ("big".into(), Value::bytes(pattern(min * 2, seed))),
            (
                "nested".into(),
                Value::List(vec![
                    Value::Str("s".into()),
                    Value::bytes(pattern(300, seed)),
                ]),
            ),
        ],
    }
}

/// The tag of [`upload_args`].
fn tag(args: &Args) -> i64 {
    match args.positional.first() {
        Some(Value::Int(tag)) => *tag,
        other => panic!("no tag: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_byte_strings_are_uploaded_intact() {
    // Requests with large byte strings leave the client with the strings written from their
    // own memory, between the frame's other bytes; alone (written at once) and pipelined from
    // several tasks (queued and coalesced), the server must receive exactly what was sent.
    let mut fake = Fake::start().await;
    let conn = connect(&fake).await;
    let call = |conn: Connection, args: Args| async move {
        conn.request(Op::Call {
            obj: NetRefId(1),
            args,
            mode: ReturnMode::Value,
        })
        .await
        .expect("call")
    };
    let echo = |args: &Args| {
        Value::Tuple(vec![
            Value::List(args.positional.clone()),
            Value::Dict(
                args.keyword
                    .iter()
                    .map(|(k, v)| (Value::Str(k.clone()), v.clone()))
                    .collect(),
            ),
        ])
    };
    let mut sent = std::collections::BTreeMap::new();
    for i in 0..4 {
        let args = upload_args(99, i);
        assert!(
            call(conn.clone(), args.clone()).await == echo(&args),
            "call {i}"
        );
        sent.insert(tag(&args), args);
    }
    let tasks: Vec<_> = (0..4u8)
        .map(|t| {
            let conn = conn.clone();
            tokio::spawn(async move {
                let mut sent = Vec::new();
                for i in 0..6u8 {
                    let args = upload_args(t, i);
                    let reply = call(conn.clone(), args.clone()).await;
                    assert!(reply == echo(&args), "task {t}, call {i}: wrong reply");
                    sent.push(args);
                }
                sent
            })
        })
        .collect();
    for task in tasks {
        for args in task.await.expect("join") {
            sent.insert(tag(&args), args);
        }
    }
    conn.ping().await.expect("ping");
    let mut received = std::collections::BTreeMap::new();
    for message in fake.until_ping().await {
        if let Message::Request {
            op: Op::Call { args, .. },
            ..
        } = message
        {
            assert!(
                received.insert(tag(&args), args).is_none(),
                "each call arrives once"
            );
        }
    }
    assert_eq!(received.len(), 4 + 4 * 6);
    assert!(received == sent, "the server received other bytes");
}

#[tokio::test]
async fn the_client_answers_server_pings() {
    let mut fake = Fake::start().await;
    let conn = connect(&fake).await;
    conn.execute("pass").await.expect("execute");
    conn.eval_value("pingme").await.expect("eval");
    fake.wait_for(|m| matches!(m, Message::Pong { id: RequestId(999) }))
        .await;
}

#[tokio::test]
async fn low_level_requests_and_adopt() {
    let mut fake = Fake::start().await;
    let conn = connect(&fake).await;
    let value = conn
        .request(Op::Eval {
            expr: "x".into(),
            mode: ReturnMode::Ref,
        })
        .await
        .expect("request");
    let netref = value.as_ref().expect("a reference").clone();
    let obj = conn.adopt(netref.clone());
    assert_eq!(obj.netref(), &netref);
    drop(obj);
    assert_eq!(
        fake.wait_for(|m| matches!(m, Message::Release { .. }))
            .await,
        Message::Release {
            ids: vec![netref.id]
        }
    );
    let err = conn.request(Op::Len { obj: NetRefId(1) }).await;
    assert_eq!(err.expect("len"), Value::Int(3));
    let _ = ServerError::Cancelled;
}

#[tokio::test]
async fn handshake_failures_are_reported() {
    let fake = Fake::start_with(Behave::Version(99)).await;
    let err = Connection::connect(fake.addr())
        .await
        .expect_err("mismatch");
    assert!(
        matches!(
            err,
            Error::Protocol(ProtocolError::VersionMismatch {
                ours: rpyc_protocol::PROTOCOL_VERSION,
                theirs: 99
            })
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "protocol version mismatch: we speak version 2, the peer speaks version 99"
    );

    let fake = Fake::start_with(Behave::BadMagic).await;
    let err = Connection::connect(fake.addr())
        .await
        .expect_err("bad magic");
    assert!(
        matches!(err, Error::Protocol(ProtocolError::BadMagic { .. })),
        "{err:?}"
    );

    let fake = Fake::start_with(Behave::Refuse("too many connections".into())).await;
    let err = Connection::connect(fake.addr()).await.expect_err("refused");
    assert!(err.is_disconnected());
    assert!(
        err.to_string()
            .contains("refused the connection: too many connections"),
        "{err}"
    );

    let fake = Fake::start_with(Behave::Silent).await;
    let err = Connection::builder(fake.addr())
        .connect_timeout(SHORT)
        .connect()
        .await
        .expect_err("silent");
    assert!(
        matches!(err, Error::ConnectTimeout { .. }) && err.is_timeout(),
        "{err:?}"
    );
    assert!(err.to_string().contains(&fake.addr()), "{err}");

    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    drop(listener);
    let err = Connection::connect(addr.as_str())
        .await
        .expect_err("refused");
    assert!(matches!(err, Error::Io(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains(&format!("cannot connect to {addr}")),
        "{err}"
    );
}

#[tokio::test]
async fn futures_are_send() {
    fn is_send<T: Send>(_: &T) {}
    fn is_send_sync<T: Send + Sync>() {}
    is_send_sync::<Connection>();
    is_send_sync::<crate::RemoteObject>();
    is_send_sync::<crate::RemoteIter>();
    is_send_sync::<crate::TypedIter<String>>();
    is_send_sync::<crate::blocking::Connection>();
    is_send_sync::<crate::blocking::RemoteObject>();
    is_send_sync::<crate::blocking::RemoteIter>();
    is_send_sync::<crate::blocking::TypedIter<String>>();
    let fake = Fake::start().await;
    let conn = connect(&fake).await;
    let obj = conn.eval_object("x").await.expect("object");
    is_send(&conn.eval::<i64>("1"));
    is_send(&obj.call((&obj, 1)));
    is_send(&obj.iter().collect_all());
    is_send(&conn.modules().get("sys"));
}

#[test]
fn the_blocking_client_works_from_four_threads() {
    // The fake server runs on its own runtime; the blocking client must not run inside one.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let mut fake = rt.block_on(Fake::start());
    let conn = crate::blocking::Connection::builder(fake.addr())
        .batch_size(2)
        .timeout(Duration::from_secs(2))
        .connect()
        .expect("connect");
    assert_eq!(conn.server_info().server, "fake 0.0.0");
    std::thread::scope(|s| {
        for t in 0..4i64 {
            let conn = conn.clone();
            s.spawn(move || {
                for i in 0..25i64 {
                    let n = t * 100 + i;
                    assert_eq!(conn.eval::<i64>(&n.to_string()).expect("eval"), n);
                }
                let obj = conn.eval_object("range").expect("object");
                let items: Vec<i64> = obj.iter_as().collect::<Result<_, _>>().expect("iterate");
                assert_eq!(items, vec![0, 1, 2, 3, 4]);
                assert_eq!(obj.iter().count(), 5);
                let sys = conn.modules().get("sys").expect("sys");
                assert_eq!(
                    sys.getattr_as::<String>("platform").expect("platform"),
                    "platform"
                );
                conn.ping().expect("ping");
            });
        }
    });
    let err = conn.eval_value("raise").expect_err("raises");
    assert!(err.is_remote());
    let ns = conn.namespace().expect("namespace");
    ns.setitem("k", &ns).expect("setitem");
    conn.close();
    assert!(conn.eval_value("1").expect_err("closed").is_disconnected());
    rt.block_on(async {
        fake.wait_for(|m| matches!(m, Message::Goodbye { .. }))
            .await;
    });
}

#[tokio::test]
async fn a_garbled_response_fails_its_call_only() {
    let fake = Fake::start().await;
    let conn = connect(&fake).await;
    for typed in [false, true] {
        let err = if typed {
            conn.eval::<i64>("garbled").await.expect_err("garbled")
        } else {
            conn.eval_value("garbled").await.expect_err("garbled")
        };
        assert!(
            matches!(err, Error::Protocol(ProtocolError::Decode(_))),
            "{err:?}"
        );
        assert!(err.to_string().contains("malformed"), "{err}");
        // The connection goes on.
        assert_eq!(conn.eval::<i64>("5").await.expect("eval"), 5);
    }
}
