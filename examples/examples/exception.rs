//! A remote exception (the stock `rpyc_exception.py`).
//!
//! `execute("z = x/y")` with `y = 0` raises `ZeroDivisionError` on the server. The example
//! first prints the error the way Python prints an uncaught RPyC exception: the local context
//! (where this program made the call), then the remote traceback. Then it catches the
//! exception by type name (and by a base class), fixes `y`, and carries on.
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
//! cargo run -p rpyc-examples --example exception -- [host[:port]]
//! ```

use rpyc_client::{Connection, Error};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = rpyc_examples::init();
    let conn = Connection::connect(addr).await?;

    conn.execute("x = 1\ny = 0").await?;

    // 1. Uncaught: print it as Python would, local context first, then the remote traceback.
    let code = "z = x/y";
    let (file, line) = (file!(), line!() + 1);
    match conn.execute(code).await {
        Err(e) => print_uncaught(&e, file, line, &format!("conn.execute({code:?})")),
        Ok(()) => anyhow::bail!("`{code}` with y = 0 should have raised"),
    }
    println!();

    // 2. Caught by type name: `except ZeroDivisionError as e:`.
    match conn.eval::<f64>("x / y").await {
        Err(e)
            if e.remote_exception()
                .is_some_and(|x| x.type_name == "ZeroDivisionError") =>
        {
            let exc = e.remote_exception().map(|x| x.message.as_str());
            println!("caught ZeroDivisionError: {}", exc.unwrap_or_default());
        }
        other => anyhow::bail!("expected a ZeroDivisionError, got {other:?}"),
    }

    // 3. Caught by a base class: `except ArithmeticError:` (the server sends the whole MRO).
    match conn.execute(code).await {
        Err(Error::Remote(exc)) if exc.is_instance("ArithmeticError") => {
            println!("caught {} as an ArithmeticError", exc.type_name);
        }
        other => anyhow::bail!("expected an ArithmeticError, got {other:?}"),
    }

    // 4. Carry on: the connection is fine after a remote exception.
    conn.execute("y = 4").await?;
    conn.execute(code).await?;
    println!(
        "carrying on with y = 4: z = {}",
        conn.eval::<f64>("z").await?
    );

    conn.close().await;
    Ok(())
}

/// Prints `e` the way Python prints an uncaught RPyC exception: the local traceback (here,
/// the one call that failed), the exception line, then the remote traceback.
fn print_uncaught(e: &Error, file: &str, line: u32, call: &str) {
    println!("Traceback (most recent call last):");
    println!("  File \"{file}\", line {line}, in main");
    println!("    {call}");
    match e.remote_exception() {
        Some(exc) => {
            println!("{}: {}", exc.type_name, exc.message);
            println!();
            println!("========= Remote Traceback (1) =========");
            // `Display` of a RemoteException is the remote traceback, as Python prints it.
            println!("{exc}");
        }
        // A transport error (timeout, disconnect) has no remote traceback.
        None => println!("{e}"),
    }
}
