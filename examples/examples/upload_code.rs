//! Running local Python code on the server (the stock `remote_code.py` scenario).
//!
//! Reads `examples/remote_code.py` (a `fib` function) as text and runs it remotely with
//! `execute`, then calls the function through `namespace()` for several arguments. Then it
//! uploads the same file as a module: writes it into a temporary directory on the server,
//! adds that directory to the server's `sys.path`, and imports it through `modules()`.
//! Finally it removes the module and the directory again.
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
//! cargo run -p rpyc-examples --example upload_code -- [host[:port]]
//! ```

use std::path::Path;

use anyhow::Context;
use rpyc_client::{Connection, Value};

/// The module name the file is uploaded as.
const MODULE: &str = "remote_code";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = rpyc_examples::init();
    let conn = Connection::connect(addr).await?;

    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("remote_code.py");
    let code = std::fs::read_to_string(&file)
        .with_context(|| format!("cannot read {}", file.display()))?;

    // 1. Run the file's text in the connection's namespace, then call what it defined.
    conn.execute(&code).await?;
    let fib = conn.namespace().await?.getitem("fib").await?;
    for n in [0, 1, 2, 10, 20, 50, 90] {
        let value: i64 = fib.call_as((n,)).await?;
        println!("fib({n}) = {value}");
    }
    // Python integers have no size limit; u128 takes those that outgrow i64.
    let big: u128 = fib.call_as((100,)).await?;
    println!("fib(100) = {big}");

    // 2. Upload it as a module: write it into a remote temporary directory on sys.path.
    let tempfile = conn.modules().get("tempfile").await?;
    let dir: String = tempfile
        .call_method_with_as("mkdtemp", (), [("prefix", "rpyc-upload-")])
        .await?;
    let path = conn.modules().get("os.path").await?;
    let target: String = path
        .call_method_as("join", (dir.as_str(), format!("{MODULE}.py")))
        .await?;
    let builtins = conn.builtins().await?;
    let remote_file = builtins
        .call_method_with("open", (target.as_str(), "w"), [("encoding", "utf-8")])
        .await?;
    let written: usize = remote_file
        .call_method_as("write", (code.as_str(),))
        .await?;
    remote_file.call_method("close", ()).await?;
    println!("uploaded {written} characters to {target}");

    let sys = conn.modules().get("sys").await?;
    let sys_path = sys.getattr("path").await?;
    sys_path.call_method("insert", (0, dir.as_str())).await?;
    // A module of that name imported earlier (by another run) would shadow the upload.
    let sys_modules = sys.getattr("modules").await?;
    sys_modules
        .call_method("pop", (MODULE, Value::None))
        .await?;
    conn.modules()
        .get("importlib")
        .await?
        .call_method("invalidate_caches", ())
        .await?;

    let module = conn.modules().get(MODULE).await?;
    let origin: String = module.getattr_as("__file__").await?;
    let value: i64 = module.call_method_as("fib", (30,)).await?;
    println!("imported {MODULE} from {origin}");
    println!("{MODULE}.fib(30) = {value}");

    // 3. Clean up on the server.
    sys_path.call_method("remove", (dir.as_str(),)).await?;
    sys_modules
        .call_method("pop", (MODULE, Value::None))
        .await?;
    conn.modules()
        .get("shutil")
        .await?
        .call_method("rmtree", (dir.as_str(),))
        .await?;
    let gone: bool = !path
        .call_method_as::<bool>("exists", (dir.as_str(),))
        .await?;
    println!("removed {dir}: {gone}");

    conn.close().await;
    Ok(())
}
