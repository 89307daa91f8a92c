//! The RPyC classic tutorial as runnable Rust programs; the programs are in `examples/`, one per
//! scenario of the stock Python scripts, and this library holds the start-up they share:
//!
//! | Example | Stock script | Shows |
//! |---|---|---|
//! | `modules` | `rpyc_modules.py` | the remote `sys`, `os` and `os.path` through `modules()` |
//! | `variables` | `rpyc_variables.py` | `execute`/`eval`, copying by value, changing through `namespace()` |
//! | `exception` | `rpyc_exception.py` | a remote `ZeroDivisionError`: printing its traceback, catching it by type |
//! | `upload_code` | `remote_code.py` | running a local `.py` file remotely, and importing it as a module |
//! | `timeout` | `rpyc_timeout.py` | request timeouts; the server interrupts the abandoned call |
//! | `ping` | `rpyc_ping.py` | round-trip times, idle and while Python is busy; a dead server |
//! | `reconnect_objects` | `rpyc_reconnect_objects.py` | remote objects after a server restart: stale, then fresh |
//! | `with_reconnect` | `rpyc_with_reconnect.py` | a `ReconnectPolicy` riding out a server restart |
//!
//! Start a server, then run an example (the address defaults to `localhost`, port 18812):
//!
//! ```sh
//! cargo run --release -p rpyc-server --bin rpyc-classic
//! cargo run -p rpyc-examples --example modules -- [host[:port]]
//! ```
//!
//! Each example is run against the real server by `integration-tests/tests/examples.rs`.

use tracing_subscriber::EnvFilter;

/// Start-up shared by the examples: logs to stderr filtered by `RUST_LOG`, and returns the
/// server address from the first argument (default `localhost`, port 18812 unless given as
/// `host:port`).
pub fn init() -> String {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    std::env::args()
        .nth(1)
        .unwrap_or_else(|| "localhost".into())
}
