//! The blocking client against the real server.

use std::time::Duration;

use rpyc_client::blocking::Connection;
use rpyc_integration_tests::TestServer;

#[test]
fn blocking_client_does_the_tutorial() -> anyhow::Result<()> {
    let server = TestServer::start()?;
    let conn = Connection::builder(server.url())
        .timeout(Duration::from_secs(20))
        .connect()?;
    conn.execute("scores = {'Foo': 12, 'Bar': 30}")?;
    let ns = conn.namespace()?;
    let scores = ns.getitem("scores")?;
    let bar: i64 = scores.getitem_as("Bar")?;
    scores.setitem("Bar", bar + 58)?;
    assert_eq!(conn.eval::<i64>("scores['Bar']")?, 88);
    let sys = conn.modules().get("sys")?;
    assert_eq!(sys.getattr_as::<String>("platform")?, std::env::consts::OS);
    let items: Vec<i64> = conn
        .eval_object("range(5)")?
        .iter_as::<i64>()
        .collect::<Result<_, _>>()?;
    assert_eq!(items, vec![0, 1, 2, 3, 4]);
    let err = conn.eval::<i64>("1/0").expect_err("remote error");
    assert!(err.is_remote());
    assert!(conn.ping()? < Duration::from_secs(1));
    // Shared by several threads at once.
    std::thread::scope(|s| {
        for t in 0..4i64 {
            let conn = conn.clone();
            s.spawn(move || {
                for i in 0..50i64 {
                    let v: i64 = conn.eval(&format!("{t} * 100 + {i}")).expect("eval");
                    assert_eq!(v, t * 100 + i);
                }
            });
        }
    });
    conn.close();
    assert!(conn.eval::<i64>("1").expect_err("closed").is_disconnected());
    Ok(())
}
