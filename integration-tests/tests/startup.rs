//! Start-up: the start line, Python home on a bare environment, venvs, stdout, `--help`.

use std::process::Command;
use std::time::Duration;

use rpyc_integration_tests::{TestServer, server_binary};

use crate::support::{assert_healthy, connect};

/// `sys.base_prefix` of the interpreter the build used (the one on this test's PATH, or
/// `PYO3_PYTHON`).
fn build_python_prefix() -> anyhow::Result<String> {
    let python = std::env::var("PYO3_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let out = Command::new(python)
        .args(["-c", "import sys; print(sys.base_prefix)"])
        .output()?;
    anyhow::ensure!(out.status.success(), "python3 failed");
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

#[tokio::test]
async fn start_line_reports_the_real_port_and_python_version() -> anyhow::Result<()> {
    let server = TestServer::start()?;
    let out = server.stdout();
    let line = out.lines().next().unwrap_or_default();
    assert!(
        line.starts_with("rpyc-classic 0.1.0: server started on 127.0.0.1:"),
        "{line}"
    );
    assert_ne!(server.addr().port(), 0);
    assert!(line.contains("(Python 3."), "{line}");
    let conn = connect(&server).await?;
    assert!(conn.server_info().python_version.starts_with("3."));
    assert!(server.wait_for_log("connection accepted", Duration::from_secs(5)));
    conn.close().await;
    // The goodbye arrives before the write side is shut down.
    assert!(
        server.wait_for_log("client closed the connection", Duration::from_secs(5)),
        "{}",
        server.stderr()
    );
    assert!(server.stderr().contains("connection closed"));
    Ok(())
}

/// With no environment at all (no PATH, no PYTHONHOME), the binary still finds libpython and
/// uses the build interpreter's standard library, not the system Python's.
#[tokio::test]
async fn runs_with_an_empty_environment_and_the_right_python_home() -> anyhow::Result<()> {
    let server = TestServer::builder().env_clear().start()?;
    let conn = connect(&server).await?;
    let prefix: String = conn.eval("__import__('sys').prefix").await?;
    assert_eq!(prefix, build_python_prefix()?);
    let os_file: String = conn.eval("__import__('os').__file__").await?;
    assert!(
        os_file.starts_with(&prefix),
        "os from {os_file}, prefix {prefix}"
    );
    // The standard library works: a C extension module and a pure-Python package.
    let digest: String = conn
        .eval("__import__('hashlib').sha256(b'abc').hexdigest()[:8]")
        .await?;
    assert_eq!(digest, "ba7816bf");
    let dumped: String = conn.eval("__import__('json').dumps({'a': [1, 2]})").await?;
    assert_eq!(dumped, r#"{"a": [1, 2]}"#);
    Ok(())
}

#[tokio::test]
async fn print_goes_to_the_server_stdout() -> anyhow::Result<()> {
    let server = TestServer::start()?;
    let conn = connect(&server).await?;
    conn.execute("print('hello from the client', 42)").await?;
    assert!(
        server.wait_for_stdout("hello from the client 42", Duration::from_secs(5)),
        "stdout: {}",
        server.stdout()
    );
    Ok(())
}

/// `--venv` (and `VIRTUAL_ENV`) make a virtual environment's packages importable.
#[tokio::test]
async fn venv_packages_are_importable() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("rpyc-venv-test-{}", std::process::id()));
    let site = dir
        .join("lib")
        .join(python_lib_dir()?)
        .join("site-packages");
    std::fs::create_dir_all(&site)?;
    std::fs::write(site.join("venv_marker_pkg.py"), "MARK = 'from the venv'\n")?;

    let server = TestServer::builder()
        .arg("--venv")
        .arg(dir.display().to_string())
        .start()?;
    let conn = connect(&server).await?;
    let mark: String = conn.eval("__import__('venv_marker_pkg').MARK").await?;
    assert_eq!(mark, "from the venv");
    drop(server);

    let server = TestServer::builder()
        .env("VIRTUAL_ENV", dir.display().to_string())
        .start()?;
    let conn = connect(&server).await?;
    let mark: String = conn.eval("__import__('venv_marker_pkg').MARK").await?;
    assert_eq!(mark, "from the venv");

    let bad = TestServer::builder()
        .arg("--venv")
        .arg("/nonexistent/venv")
        .start();
    let err = bad.expect_err("a missing venv must stop the server");
    assert!(err.to_string().contains("site-packages"), "{err:#}");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn python_lib_dir() -> anyhow::Result<String> {
    let python = std::env::var("PYO3_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let out = Command::new(python)
        .args([
            "-c",
            "import sys; print(f'python{sys.version_info[0]}.{sys.version_info[1]}')",
        ])
        .output()?;
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

#[test]
fn help_explains_every_option() -> anyhow::Result<()> {
    let out = Command::new(server_binary()?).arg("--help").output()?;
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout)?;
    for option in [
        "--host",
        "--port",
        "--venv",
        "--max-connections",
        "--max-frame-bytes",
        "--spin-us",
        "--log",
        "--version",
    ] {
        assert!(help.contains(option), "--help lacks {option}:\n{help}");
    }
    // A polling time beyond a second is refused by name, before anything starts.
    let out = Command::new(server_binary()?)
        .args(["--spin-us", "5000000", "--port", "0"])
        .output()?;
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr)?;
    assert!(
        err.contains("--spin-us") && err.contains("1000000"),
        "{err}"
    );
    Ok(())
}

#[tokio::test]
async fn sigterm_stops_the_server_cleanly() -> anyhow::Result<()> {
    let mut server = TestServer::start()?;
    let conn = connect(&server).await?;
    assert_healthy(&server).await?;
    #[cfg(unix)]
    {
        let status = server.terminate(Duration::from_secs(10))?;
        assert!(status.success(), "exit status {status}");
        let err = conn.eval::<i64>("1").await.expect_err("server is gone");
        assert!(err.is_disconnected(), "{err}");
    }
    Ok(())
}
