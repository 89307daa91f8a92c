//! Variables in the connection's namespace (the stock `rpyc_variables.py`).
//!
//! `execute` creates a variable and changes it, `eval` reads it back. Then a dict of scores is
//! created remotely, changed remotely, and copied here by value (`eval::<HashMap<..>>`): the
//! copy is a plain Rust map. Finally the remote dict is changed in place through
//! `namespace()`, the Rust spelling of `conn.namespace["scores"]["Bar"] += 58`.
//!
//! Start the server:
//!
//! ```sh
//! cargo run --release -p rpyc-server --bin rpyc-classic
//! ```
//!
//! Run (the address defaults to `localhost`, port 18812):
//!
//! ```sh
//! cargo run -p rpyc-examples --example variables -- [host[:port]]
//! ```

use std::collections::{BTreeMap, HashMap};

use rpyc_client::Connection;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = rpyc_examples::init();
    let conn = Connection::connect(addr).await?;

    // A variable: created, changed, read back.
    conn.execute("x = 6").await?;
    println!("x = {}", conn.eval::<i64>("x").await?);
    conn.execute("x *= 7").await?;
    println!("after `x *= 7`: x = {}", conn.eval::<i64>("x").await?);

    // A dict, created and changed remotely, then copied here by value.
    conn.execute("scores = {'Foo': 12, 'Bar': 30}").await?;
    conn.execute("scores['Baz'] = 99").await?;
    let mut copy: HashMap<String, i64> = conn.eval("scores").await?;
    println!("copied by value: {}", sorted(&copy));
    // The copy is local: changing it does not touch the server.
    copy.insert("Foo".into(), 0);
    let remote_foo: i64 = conn.eval("scores['Foo']").await?;
    println!(
        "local copy Foo = {}, remote Foo = {remote_foo}",
        copy["Foo"]
    );

    // By reference: conn.namespace["scores"]["Bar"] += 58 changes the remote dict in place.
    let scores = conn.namespace().await?.getitem("scores").await?;
    let before: i64 = scores.getitem_as("Bar").await?;
    println!("remote scores['Bar'] before: {before}");
    scores.setitem("Bar", before + 58).await?;
    let after: i64 = conn.eval("scores['Bar']").await?;
    println!("remote scores['Bar'] after += 58: {after}");
    let now: HashMap<String, i64> = scores.get().await?;
    println!("remote scores now: {}", sorted(&now));

    conn.close().await;
    Ok(())
}

/// `{"Bar": 30, "Baz": 99, "Foo": 12}`: a map printed in key order.
fn sorted(map: &HashMap<String, i64>) -> String {
    format!("{:?}", map.iter().collect::<BTreeMap<_, _>>())
}
