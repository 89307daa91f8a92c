//! Remote objects: modules, attributes, calls, items, iteration, comparison, release.

use std::time::Duration;

use rpyc_client::{CompareOp, Connection, Value};
use rpyc_integration_tests::TestServer;

use crate::support::{assert_healthy, connect};

#[tokio::test]
async fn modules_namespace_and_builtins() -> anyhow::Result<()> {
    let server = TestServer::start()?;
    let conn = connect(&server).await?;
    let sys = conn.modules().get("sys").await?;
    assert_eq!(sys.type_name(), "builtins.module");
    let platform: String = sys.getattr_as("platform").await?;
    assert_eq!(platform, std::env::consts::OS);
    let version: String = sys.getattr_as("version").await?;
    assert!(version.starts_with("3."));
    let path = conn.modules().get("os.path").await?;
    let joined: String = path.call_method_as("join", ("a", "b", "c")).await?;
    assert_eq!(joined, format!("a{0}b{0}c", std::path::MAIN_SEPARATOR));
    let cwd: String = conn
        .modules()
        .get("os")
        .await?
        .call_method_as("getcwd", ())
        .await?;
    assert!(!cwd.is_empty());
    let err = conn
        .modules()
        .get("no_such_module_xyz")
        .await
        .expect_err("missing module");
    assert_eq!(
        err.remote_exception().map(|e| e.type_name.as_str()),
        Some("ModuleNotFoundError")
    );
    let builtins = conn.builtins().await?;
    let n: i64 = builtins
        .getattr("len")
        .await?
        .call_as((vec![1, 2, 3],))
        .await?;
    assert_eq!(n, 3);
    let ns = conn.namespace().await?;
    ns.setitem("from_rust", 7).await?;
    assert_eq!(conn.eval::<i64>("from_rust * 6").await?, 42);
    Ok(())
}

#[tokio::test]
async fn attributes_calls_and_items() -> anyhow::Result<()> {
    let server = TestServer::start()?;
    let conn = connect(&server).await?;
    conn.execute(
        "class Thing:\n    def __init__(self):\n        self.a = 1\n    def add(self, x, y=10, *, scale=1):\n        return (self.a + x + y) * scale\n    def __repr__(self):\n        return 'Thing(a=%d)' % self.a\n    def __str__(self):\n        return 'a thing'\nthing = Thing()",
    )
    .await?;
    let thing = conn.eval_object("thing").await?;
    assert_eq!(thing.type_name(), "__main__.Thing");
    assert_eq!(thing.getattr_as::<i64>("a").await?, 1);
    thing.setattr("a", 5).await?;
    assert_eq!(conn.eval::<i64>("thing.a").await?, 5);
    thing.setattr("extra", "x").await?;
    thing.delattr("extra").await?;
    assert!(!conn.eval::<bool>("hasattr(thing, 'extra')").await?);
    let err = thing.getattr("missing").await.expect_err("no attribute");
    assert_eq!(
        err.remote_exception().map(|e| e.type_name.as_str()),
        Some("AttributeError")
    );

    assert_eq!(thing.call_method_as::<i64>("add", (1,)).await?, 16);
    assert_eq!(
        thing
            .call_method_with_as::<i64>("add", (1, 2), [("scale", Value::Int(3))])
            .await?,
        24
    );
    let add = thing.getattr("add").await?;
    assert_eq!(
        add.call_with_as::<i64>((1,), [("y", Value::Int(0))])
            .await?,
        6
    );
    assert_eq!(thing.repr().await?, "Thing(a=5)");
    assert_eq!(thing.str().await?, "a thing");
    assert!(thing.dir().await?.contains(&"add".to_owned()));

    // A remote object passed back as an argument is the same object on the server.
    let is_same = conn.eval_object("lambda o: o is thing").await?;
    assert!(is_same.call_as::<bool>((&thing,)).await?);
    let ns = conn.namespace().await?;
    ns.setitem("alias", &thing).await?;
    assert!(conn.eval::<bool>("alias is thing").await?);

    let items = conn.eval_object("{'a': [1, 2]}").await?;
    let inner = items.getitem("a").await?;
    inner.call_method("append", (3,)).await?;
    assert_eq!(items.getitem_as::<Vec<i64>>("a").await?, vec![1, 2, 3]);
    items.setitem("b", 2).await?;
    assert_eq!(items.len().await?, 2);
    assert!(items.contains("b").await?);
    items.delitem("b").await?;
    assert!(!items.contains("b").await?);
    let err = items.getitem("zzz").await.expect_err("no key");
    assert_eq!(
        err.remote_exception().map(|e| e.type_name.as_str()),
        Some("KeyError")
    );
    Ok(())
}

#[tokio::test]
async fn comparison_and_hash() -> anyhow::Result<()> {
    let server = TestServer::start()?;
    let conn = connect(&server).await?;
    let five = conn.eval_object("5").await?;
    assert!(five.eq(5).await?);
    assert!(five.compare(CompareOp::Lt, 6).await?);
    assert!(five.compare(CompareOp::Ge, 5).await?);
    assert!(!five.compare(CompareOp::Gt, 5).await?);
    assert!(five.compare(CompareOp::Ne, 4).await?);
    assert_eq!(five.hash().await?, 5);
    let text = conn.eval_object("'abc'").await?;
    let expected: i64 = conn.eval("hash('abc')").await?;
    assert_eq!(text.hash().await?, expected);
    let list = conn.eval_object("[1, 2]").await?;
    let other = conn.eval_object("[1, 2]").await?;
    assert!(list.eq(&other).await?);
    let err = list.hash().await.expect_err("lists are unhashable");
    assert_eq!(
        err.remote_exception().map(|e| e.type_name.as_str()),
        Some("TypeError")
    );
    Ok(())
}

#[tokio::test]
async fn iteration_is_batched_and_complete() -> anyhow::Result<()> {
    let server = TestServer::start()?;
    let conn = Connection::builder(server.url())
        .batch_size(100)
        .connect()
        .await?;
    let list = conn.eval_object("list(range(1050))").await?;
    let items: Vec<i64> = list.iter_as::<i64>().collect_all().await?;
    assert_eq!(items, (0..1050).collect::<Vec<_>>());
    // A generator, consumed lazily, with items as remote objects.
    conn.execute("produced = []\ndef gen():\n    for i in range(5):\n        produced.append(i)\n        yield [i]").await?;
    let generator = conn.eval_object("gen()").await?;
    let mut it = generator.iter();
    let mut seen = Vec::new();
    while let Some(item) = it.next().await {
        let item = item?;
        assert_eq!(item.type_name(), "builtins.list");
        seen.push(item.getitem_as::<i64>(0).await?);
    }
    assert_eq!(seen, vec![0, 1, 2, 3, 4]);
    let empty: Vec<i64> = conn
        .eval_object("[]")
        .await?
        .iter_as::<i64>()
        .collect_all()
        .await?;
    assert!(empty.is_empty());
    // One round trip per 100 items: 10k items take about 100 requests, far under a second.
    let big = conn.eval_object("list(range(10000))").await?;
    let started = std::time::Instant::now();
    let n = big.iter_as::<i64>().collect_all().await?.len();
    assert_eq!(n, 10_000);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    let err = conn
        .eval_object("5")
        .await?
        .iter()
        .collect_all()
        .await
        .expect_err("int is not iterable");
    assert_eq!(
        err.remote_exception().map(|e| e.type_name.as_str()),
        Some("TypeError")
    );
    Ok(())
}

/// Dropping a `RemoteObject` frees the server's reference; closing a connection frees all.
#[tokio::test]
async fn released_references_free_the_objects() -> anyhow::Result<()> {
    let server = TestServer::start()?;
    let watcher = connect(&server).await?;
    watcher
        .execute("import weakref, gc\nclass Obj: pass\nrefs = []\ndef alive():\n    gc.collect()\n    return sum(1 for r in refs if r() is not None)")
        .await?;
    let owner = connect(&server).await?;
    let make = watcher
        .eval_object("lambda: refs.append(weakref.ref(o := Obj())) or o")
        .await?;
    // Objects created by the watcher's namespace, but held only through `owner`'s references.
    let maker_for_owner = owner.eval_object("lambda f: f()").await?;
    let a = maker_for_owner.call((&make,)).await;
    // `make` belongs to another connection: that is refused, not silently wrong.
    assert!(a.is_err(), "a foreign reference must be refused");

    let a = make.call(()).await?;
    let b = make.call(()).await?;
    assert_eq!(watcher.eval::<i64>("alive()").await?, 2);
    drop(a);
    let freed = wait_for(&watcher, "alive()", 1).await?;
    assert!(freed, "dropping a RemoteObject did not free it");
    let b2 = b.clone();
    drop(b);
    assert_eq!(
        watcher.eval::<i64>("alive()").await?,
        1,
        "a clone still holds it"
    );
    drop(b2);
    assert!(wait_for(&watcher, "alive()", 0).await?);

    // All references of a closed connection are freed.
    let other = connect(&server).await?;
    other
        .execute("import sys\nholder = sys.modules['__main__']")
        .await?;
    let watch_ns = watcher.namespace().await?;
    let maker = other.eval_object("lambda f: [f() for _ in range(3)]").await;
    drop(maker);
    let objs = make.call(()).await?;
    let _keep = [objs];
    assert_eq!(watcher.eval::<i64>("alive()").await?, 1);
    drop(watch_ns);
    drop(other);
    drop(owner);
    Ok(())
}

async fn wait_for(conn: &Connection, expr: &str, want: i64) -> anyhow::Result<bool> {
    for _ in 0..200 {
        if conn.eval::<i64>(expr).await? == want {
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(false)
}

/// Closing a connection frees the objects only its references held; a connection that never
/// ran anything closes without involving Python at all, and neither disturbs the others.
#[tokio::test]
async fn closing_a_connection_frees_what_it_held() -> anyhow::Result<()> {
    let server = TestServer::start()?;
    let watcher = connect(&server).await?;
    // A maker every connection can reach (through a module), whose objects the watcher counts.
    watcher
        .execute(
            "import sys, weakref, gc\nclass Obj: pass\nrefs = []\n\
             sys.rpyc_test_make = lambda: refs.append(weakref.ref(o := Obj())) or o\n\
             def alive():\n    gc.collect()\n    return sum(1 for r in refs if r() is not None)",
        )
        .await?;
    let owner = connect(&server).await?;
    let held = [
        owner
            .eval_object("__import__('sys').rpyc_test_make()")
            .await?,
        owner
            .eval_object("__import__('sys').rpyc_test_make()")
            .await?,
    ];
    assert_eq!(watcher.eval::<i64>("alive()").await?, 2);
    // Connections that connect and leave without a request, meanwhile.
    for _ in 0..20 {
        connect(&server).await?.close().await;
    }
    assert_eq!(
        watcher.eval::<i64>("alive()").await?,
        2,
        "still held by `owner`"
    );
    // Closed with its references still alive on this side: the server frees them all.
    owner.close().await;
    assert!(
        wait_for(&watcher, "alive()", 0).await?,
        "closing the connection did not free its objects"
    );
    drop(held);
    assert_healthy(&server).await
}
