//! Values both ways, by reference versus by value, and per-connection namespaces.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bytes::Bytes;
use rpyc_client::Value;
use rpyc_integration_tests::TestServer;
use serde_bytes::ByteBuf;
use sha2::{Digest, Sha256};

use crate::support::connect;

#[tokio::test]
async fn every_value_type_travels_both_ways() -> anyhow::Result<()> {
    let server = TestServer::start()?;
    let conn = connect(&server).await?;
    let ns = conn.namespace().await?;
    let cases: Vec<(Value, &str)> = vec![
        (Value::None, "NoneType"),
        (Value::Bool(true), "bool"),
        (Value::Int(-42), "int"),
        (Value::Int(i64::MAX), "int"),
        (
            Value::BigInt("123456789012345678901234567890".into()),
            "int",
        ),
        (Value::BigInt("-98765432109876543210".into()), "int"),
        (Value::Float(2.5), "float"),
        (Value::Complex { re: 1.0, im: -2.0 }, "complex"),
        (Value::Str("héllo ✓".into()), "str"),
        (Value::bytes(vec![0, 1, 255]), "bytes"),
        (
            Value::Tuple(vec![Value::Int(1), Value::Str("a".into())]),
            "tuple",
        ),
        (
            Value::List(vec![Value::Int(1), Value::List(vec![])]),
            "list",
        ),
        (
            Value::Dict(vec![
                (Value::Str("k".into()), Value::Int(1)),
                (Value::Int(2), Value::None),
            ]),
            "dict",
        ),
        (Value::Set(vec![Value::Int(3)]), "set"),
        (Value::FrozenSet(vec![Value::Str("x".into())]), "frozenset"),
    ];
    for (value, py_type) in cases {
        ns.setitem("v", value.clone()).await?;
        let got_type: String = conn.eval("type(v).__name__").await?;
        assert_eq!(got_type, py_type, "for {value}");
        let back = conn.eval_value("v").await?;
        assert_eq!(back, value, "round trip of {py_type}");
        // The same value through a call argument and a by-value return.
        let identity = conn.eval_object("lambda x: x").await?;
        let back = identity.call_as::<Value>((value.clone(),)).await?;
        assert_eq!(back, value, "call round trip of {py_type}");
    }
    let big: String = conn.eval("str(2**100)").await?;
    assert_eq!(conn.eval_value("2**100").await?, Value::BigInt(big));
    let n: i128 = conn.eval("-2**70").await?;
    assert_eq!(n, -(1i128 << 70));
    Ok(())
}

#[tokio::test]
async fn typed_eval_through_serde() -> anyhow::Result<()> {
    let server = TestServer::start()?;
    let conn = connect(&server).await?;
    assert_eq!(conn.eval::<i64>("1+1").await?, 2);
    assert_eq!(conn.eval::<f64>("3/2").await?, 1.5);
    assert_eq!(conn.eval::<String>("'ab' * 2").await?, "abab");
    assert_eq!(conn.eval::<Option<i32>>("None").await?, None);
    assert_eq!(conn.eval::<Vec<u8>>("[1, 2, 3]").await?, vec![1, 2, 3]);
    assert_eq!(conn.eval::<ByteBuf>("b'xyz'").await?.into_vec(), b"xyz");
    assert_eq!(
        conn.eval::<(i32, String, bool)>("(1, 'a', True)").await?,
        (1, "a".to_owned(), true)
    );
    assert_eq!(
        conn.eval::<BTreeSet<i32>>("{3, 1, 2}").await?,
        BTreeSet::from([1, 2, 3])
    );
    let m: HashMap<String, Vec<i64>> = conn.eval("{'a': [1], 'b': []}").await?;
    assert_eq!(m["a"], vec![1]);
    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct Point {
        x: i32,
        y: i32,
    }
    let p: Point = conn.eval("dict(x=1, y=2)").await?;
    assert_eq!(p, Point { x: 1, y: 2 });

    let err = conn.eval::<i64>("'abc'").await.expect_err("str is not i64");
    let text = err.to_string();
    assert!(
        text.contains("string \"abc\"") && text.contains("i64"),
        "{text}"
    );
    let err = conn.eval::<u8>("300").await.expect_err("out of range");
    assert!(err.to_string().contains("300"), "{err}");
    Ok(())
}

#[tokio::test]
async fn by_reference_changes_the_remote_object_by_value_copies_it() -> anyhow::Result<()> {
    let server = TestServer::start()?;
    let conn = connect(&server).await?;
    conn.execute("scores = {'Foo': 12, 'Bar': 30}").await?;
    // By value: a copy; changing it leaves the remote dict alone.
    let mut copy: BTreeMap<String, i64> = conn.eval("scores").await?;
    copy.insert("Bar".into(), 0);
    assert_eq!(conn.eval::<i64>("scores['Bar']").await?, 30);
    // By reference: `namespace["scores"]["Bar"] += 58` changes the remote dict.
    let ns = conn.namespace().await?;
    let scores = ns.getitem("scores").await?;
    assert_eq!(scores.type_name(), "builtins.dict");
    let bar: i64 = scores.getitem_as("Bar").await?;
    scores.setitem("Bar", bar + 58).await?;
    assert_eq!(conn.eval::<i64>("scores['Bar']").await?, 88);
    // obtain of a reference is a deep copy.
    let obtained: BTreeMap<String, i64> = scores.get().await?;
    assert_eq!(obtained["Bar"], 88);
    // Copying something that has no by-value form names the type and where it was found.
    conn.execute("import threading\nholder = {'ok': 1, 'lock': threading.Lock()}")
        .await?;
    let err = conn
        .eval::<Value>("holder")
        .await
        .expect_err("a lock cannot be copied");
    let text = err.to_string();
    assert!(
        text.contains("_thread.lock") && text.contains("'lock'"),
        "{text}"
    );
    let lock = conn.eval_object("holder['lock']").await?;
    assert_eq!(lock.type_name(), "_thread.lock");
    Ok(())
}

#[tokio::test]
async fn variables_persist_per_connection_and_are_isolated() -> anyhow::Result<()> {
    let server = TestServer::start()?;
    let a = connect(&server).await?;
    let b = connect(&server).await?;
    a.execute("x = 1").await?;
    a.execute("x += 41").await?;
    assert_eq!(a.eval::<i64>("x").await?, 42);
    let err = b.eval::<i64>("x").await.expect_err("b has no x");
    assert_eq!(
        err.remote_exception().map(|e| e.type_name.as_str()),
        Some("NameError")
    );
    b.execute("x = 'b'").await?;
    assert_eq!(a.eval::<i64>("x").await?, 42);
    assert_eq!(b.eval::<String>("x").await?, "b");
    // A function defined in one call sees the namespace in later calls.
    a.execute("def add(y):\n    return x + y").await?;
    assert_eq!(a.eval::<i64>("add(8)").await?, 50);
    assert_eq!(a.eval::<String>("__name__").await?, "__main__");
    Ok(())
}

/// Byte strings of a megabyte or more travel as blobs and the call gets the `bytes` object
/// each was read into: objects the code keeps stay intact after the request, after further
/// uploads, and after the connection that sent them is gone.
#[tokio::test]
async fn uploaded_blobs_kept_by_python_stay_intact() -> anyhow::Result<()> {
    let server = TestServer::start()?;
    let conn = connect(&server).await?;
    conn.execute(
        "import hashlib, sys\n\
         kept = []\n\
         def keep(*args, **kwargs):\n\
         \x20   kept.extend(args)\n\
         \x20   kept.extend(kwargs.values())\n\
         \x20   return [type(x) is bytes for x in args + tuple(kwargs.values())]\n\
         def sums():\n\
         \x20   return [(len(x), hashlib.sha256(x).hexdigest()) for x in kept]",
    )
    .await?;
    let keep = conn.eval_object("keep").await?;
    let blob = |n: usize, seed: u8| Bytes::from(pattern(n, seed));
    let same = blob(1 << 20, 3);
    let args = [same.clone(), blob((2 << 20) + 1, 5), same.clone()];
    let got: Vec<bool> = keep
        .call_with_as(
            args.iter().cloned().map(Value::Bytes).collect::<Vec<_>>(),
            vec![
                ("k".to_owned(), Value::Bytes(blob(1 << 21, 7))),
                // Large enough that its memory is populated while it is read.
                ("l".to_owned(), Value::Bytes(blob((9 << 20) + 3, 13))),
            ],
        )
        .await?;
    assert_eq!(got, [true; 5], "exactly bytes");
    // The same `Bytes` twice is two blobs: two objects.
    assert!(!conn.eval::<bool>("kept[0] is kept[2]").await?);
    // Churn: more uploads of the same sizes, not kept.
    let len = conn.builtins().await?.getattr("len").await?;
    for i in 0..4u8 {
        let n: usize = len.call_as((Value::Bytes(blob(1 << 20, 11 + i)),)).await?;
        assert_eq!(n, 1 << 20);
    }
    let want: Vec<(usize, String)> = args
        .iter()
        .chain([&blob(1 << 21, 7), &blob((9 << 20) + 3, 13)])
        .map(|b| (b.len(), sha256_hex(b)))
        .collect();
    assert_eq!(conn.eval::<Vec<(usize, String)>>("sums()").await?, want);
    // Kept past the connection's end: a module-level list in another connection's view.
    conn.execute(
        "import types\n\
         sys.modules['kept_blobs'] = types.ModuleType('kept_blobs')\n\
         sys.modules['kept_blobs'].kept = kept",
    )
    .await?;
    conn.close().await;
    let other = connect(&server).await?;
    let again: Vec<(usize, String)> = other
        .eval(
            "[(len(x), __import__('hashlib').sha256(x).hexdigest()) \
             for x in __import__('kept_blobs').kept]",
        )
        .await?;
    assert_eq!(again, want);
    Ok(())
}

/// `n` bytes that differ from one `seed` to the next (the Python side of
/// `large_byte_strings_arrive_intact_both_ways` computes the same formula).
fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| {
            (i as u8)
                .wrapping_mul(31)
                .wrapping_add(seed ^ (i >> 9) as u8)
        })
        .collect()
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Byte strings around the sizes where the wire stops copying them (64 KiB: shared with the
/// frame; 1 MiB: a frame buffer of its own, huge pages), both ways, next to small ones.
#[tokio::test]
async fn large_byte_strings_arrive_intact_both_ways() -> anyhow::Result<()> {
    let server = TestServer::start()?;
    let conn = connect(&server).await?;
    let sizes = [65_535, 65_536, (1 << 20) - 1, 1 << 20, (3 << 20) + 17];
    let digest = conn
        .eval_object(
            "lambda xs: [(len(x), __import__('hashlib').sha256(x).hexdigest()) for x in xs]",
        )
        .await?;
    for (i, &n) in sizes.iter().enumerate() {
        let big = pattern(n, i as u8);
        let small = pattern(10, 99);
        let arg = Value::List(vec![Value::bytes(small.clone()), Value::bytes(big.clone())]);
        let sums: Vec<(usize, String)> = digest.call_as((arg.clone(),)).await?;
        let want = conn
            .eval::<Vec<(usize, String)>>(&format!(
                "[(len(x), __import__('hashlib').sha256(x).hexdigest()) for x in \
                 (bytes((i * 31 + ({s} ^ (i >> 9))) & 255 for i in range(10)), \
                  bytes((i * 31 + ({i} ^ (i >> 9))) & 255 for i in range({n})))]",
                s = 99
            ))
            .await?;
        assert_eq!(sums, want, "upload of {n} bytes");
        // Back again, as a `Value` and as a typed buffer.
        let identity = conn.eval_object("lambda x: x").await?;
        assert_eq!(
            identity.call_as::<Value>((arg.clone(),)).await?,
            arg,
            "{n} bytes"
        );
        let typed: (ByteBuf, ByteBuf) = identity
            .call_as((Value::Tuple(vec![
                Value::bytes(small.clone()),
                Value::bytes(big.clone()),
            ]),))
            .await?;
        assert_eq!(
            (typed.0.into_vec(), typed.1.into_vec()),
            (small, big),
            "{n} bytes"
        );
    }
    // Another client meanwhile still gets right answers.
    let other = connect(&server).await?;
    assert_eq!(other.eval::<i64>("6*7").await?, 42);
    Ok(())
}
