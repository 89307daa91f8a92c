//! Test support: start the real `rpyc-classic` binary on a free port and stop it afterwards.
//!
//! [`TestServer::start`] runs `rpyc-classic --host 127.0.0.1 --port 0`, reads its start line to
//! learn the port (no fixed ports, no connect-retry loop), keeps its log for assertion messages,
//! and kills it when dropped.
//!
//! ```no_run
//! let server = rpyc_integration_tests::TestServer::start()?;
//! println!("server on {}", server.addr());
//! # anyhow::Ok(())
//! ```

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Context, bail};

/// How long a server may take to print its start line.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running `rpyc-classic` process, killed on drop.
#[derive(Debug)]
pub struct TestServer {
    child: Child,
    addr: SocketAddr,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    clear_env: bool,
}

/// Options for [`TestServer`]: extra arguments and environment.
#[derive(Debug, Default, Clone)]
pub struct TestServerBuilder {
    args: Vec<String>,
    envs: Vec<(String, String)>,
    clear_env: bool,
    port: u16,
}

impl TestServerBuilder {
    /// Adds a command-line argument.
    #[must_use]
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Sets an environment variable.
    #[must_use]
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// Starts the server with an empty environment (plus what [`env`](Self::env) sets), as on
    /// a fresh machine.
    #[must_use]
    pub fn env_clear(mut self) -> Self {
        self.clear_env = true;
        self
    }

    /// Listens on this port instead of a free one.
    #[must_use]
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// Starts the server and waits for its start line.
    ///
    /// # Errors
    /// If the binary cannot be built or started, or prints no start line in time.
    pub fn start(self) -> anyhow::Result<TestServer> {
        TestServer::spawn(self.args, self.envs, self.clear_env, self.port)
    }
}

impl TestServer {
    /// Starts `rpyc-classic` on a free loopback port.
    ///
    /// # Errors
    /// See [`TestServerBuilder::start`].
    pub fn start() -> anyhow::Result<TestServer> {
        TestServer::builder().start()
    }

    /// Options for starting a server.
    pub fn builder() -> TestServerBuilder {
        TestServerBuilder::default()
    }

    fn spawn(
        args: Vec<String>,
        envs: Vec<(String, String)>,
        clear_env: bool,
        port: u16,
    ) -> anyhow::Result<TestServer> {
        let bin = server_binary()?;
        let mut cmd = Command::new(&bin);
        cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if clear_env {
            cmd.env_clear();
        } else {
            cmd.env_remove("RUST_LOG").env_remove("VIRTUAL_ENV");
        }
        for (k, v) in &envs {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (started_tx, started_rx) = mpsc::channel();
        if let Some(out) = child.stdout.take() {
            let buf = Arc::clone(&stdout);
            std::thread::spawn(move || {
                let mut started = Some(started_tx);
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    // Record the line before announcing the start, so stdout() has it.
                    {
                        let mut b = buf.lock().unwrap_or_else(|e| e.into_inner());
                        b.push_str(&line);
                        b.push('\n');
                    }
                    if let Some(tx) = started.take_if(|_| line.contains("server started on")) {
                        let _ = tx.send(line);
                    }
                }
            });
        }
        if let Some(mut err) = child.stderr.take() {
            let buf = Arc::clone(&stderr);
            std::thread::spawn(move || {
                let mut chunk = [0u8; 4096];
                while let Ok(n) = err.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    let mut b = buf.lock().unwrap_or_else(|e| e.into_inner());
                    b.push_str(&String::from_utf8_lossy(&chunk[..n]));
                }
            });
        }
        let line = match started_rx.recv_timeout(START_TIMEOUT) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                std::thread::sleep(Duration::from_millis(100));
                bail!(
                    "rpyc-classic printed no start line within {START_TIMEOUT:?}\nstderr:\n{}",
                    stderr.lock().unwrap_or_else(|e| e.into_inner())
                );
            }
        };
        let addr = parse_start_line(&line)?;
        Ok(TestServer {
            child,
            addr,
            stdout,
            stderr,
            args,
            envs,
            clear_env,
        })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `host:port`, as clients take it.
    pub fn url(&self) -> String {
        self.addr.to_string()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the server wrote to stdout so far.
    pub fn stdout(&self) -> String {
        self.stdout
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Everything the server logged (stderr) so far.
    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until `needle` appears in stdout, up to `timeout`.
    pub fn wait_for_stdout(&self, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.stdout().contains(needle))
    }

    /// Waits until `needle` appears in the log, up to `timeout`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.stderr().contains(needle))
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Kills the server (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM (Unix) and waits up to `timeout` for the exit status.
    ///
    /// # Errors
    /// If the process does not exit in time (it is then killed).
    #[cfg(unix)]
    pub fn terminate(&mut self, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        if !status.success() {
            bail!("kill -TERM failed");
        }
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if std::time::Instant::now() > deadline {
                self.kill();
                bail!("server did not exit within {timeout:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server and starts it again with the same options on the same port.
    ///
    /// # Errors
    /// See [`TestServerBuilder::start`].
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        let port = self.addr.port();
        let fresh = TestServer::spawn(self.args.clone(), self.envs.clone(), self.clear_env, port)?;
        *self = fresh;
        Ok(())
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    done()
}

/// Extracts the address from `rpyc-classic 0.1.0: server started on 127.0.0.1:18812 (…)`.
///
/// # Errors
/// If the line has no address.
pub fn parse_start_line(line: &str) -> anyhow::Result<SocketAddr> {
    let rest = line
        .split("server started on ")
        .nth(1)
        .with_context(|| format!("not a start line: {line:?}"))?;
    let addr = rest.split_whitespace().next().unwrap_or_default();
    addr.parse()
        .with_context(|| format!("bad address in start line {line:?}"))
}

/// Path of the `rpyc-classic` binary: `$RPYC_CLASSIC_BIN`, else the one beside the test
/// executable (`target/<profile>/`), built with cargo once if missing.
///
/// # Errors
/// If the binary is missing and cannot be built.
pub fn server_binary() -> anyhow::Result<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    if let Some(path) = std::env::var_os("RPYC_CLASSIC_BIN") {
        return Ok(PathBuf::from(path));
    }
    BUILT
        .get_or_init(|| {
            let bin = profile_dir()?.join(format!("rpyc-classic{}", std::env::consts::EXE_SUFFIX));
            if !bin.exists() {
                cargo_build(&["-p", "rpyc-server", "--bin", "rpyc-classic"])?;
            }
            Ok(bin)
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// `target/<profile>/` of the running test executable (`target/<profile>/deps/<test>`).
///
/// # Errors
/// If the executable's path has no such parents.
pub fn profile_dir() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    exe.parent()
        .and_then(|deps| deps.parent())
        .map(PathBuf::from)
        .ok_or_else(|| "cannot locate the target directory".to_owned())
}

/// Runs `cargo build ARGS` for the profile of the running tests (release if they are).
///
/// # Errors
/// If cargo cannot run or the build fails.
pub fn cargo_build(args: &[&str]) -> Result<(), String> {
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cargo
        .arg("build")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if profile_dir()?.ends_with("release") {
        cargo.arg("--release");
    }
    let status = cargo
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("cargo build {} failed: {status}", args.join(" ")))
    }
}
