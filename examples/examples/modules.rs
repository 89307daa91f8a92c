//! The server's modules, as `conn.modules.sys` in RPyC (the stock `rpyc_modules.py`).
//!
//! Prints the remote interpreter's `sys.version` and `sys.platform`, its working directory
//! (`os.getcwd()`) and an `os.path.join(...)`: every value is computed on the server.
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
//! cargo run -p rpyc-examples --example modules -- [host[:port]]
//! ```

use rpyc_client::Connection;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = rpyc_examples::init();
    let conn = Connection::connect(addr).await?;

    // conn.modules.sys: the module object stays on the server; attributes are copied here.
    let sys = conn.modules().get("sys").await?;
    let version: String = sys.getattr_as("version").await?;
    let platform: String = sys.getattr_as("platform").await?;
    println!("sys.version  = {}", version.replace('\n', " "));
    println!("sys.platform = {platform}");

    // conn.modules.os.getcwd(): a remote call, its result copied here.
    let os = conn.modules().get("os").await?;
    let cwd: String = os.call_method_as("getcwd", ()).await?;
    println!("os.getcwd()  = {cwd}");

    // conn.modules["os.path"].join(...): dotted names import submodules.
    let path = conn.modules().get("os.path").await?;
    let joined: String = path
        .call_method_as("join", ("usr", "lib", "python3"))
        .await?;
    println!("os.path.join('usr', 'lib', 'python3') = {joined}");

    conn.close().await;
    Ok(())
}
