//! Child processes: the two servers, the stock Python client, the venv; and the guard that kills
//! every process the bench started, by PID, on drop, on panic and on Ctrl-C.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// The stock RPyC version the figures are compared with (the baseline's).
const STOCK_RPYC: &str = "rpyc==6.0.2";
/// How long a server may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// PIDs of the live children, for the panic hook and the Ctrl-C handler.
static LIVE: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn live() -> std::sync::MutexGuard<'static, Vec<u32>> {
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Kills every child still registered (each by its PID). Used by the panic hook and on Ctrl-C,
/// where the guards' destructors may not run.
pub(crate) fn kill_all_children() {
    for pid in live().drain(..) {
        if let Ok(pid) = libc::pid_t::try_from(pid) {
            // SAFETY: kill(2) has no memory-safety preconditions; the PID is one we spawned.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// Installs the panic hook and the Ctrl-C handler that kill the children.
pub(crate) fn install_cleanup() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        kill_all_children();
        default(info);
    }));
    tokio::spawn(async {
        if tokio::signal::ctrl_c().await.is_ok() {
            kill_all_children();
            eprintln!("rpyc-bench: interrupted");
            std::process::exit(130);
        }
    });
}

/// A child process that is killed (SIGKILL, by PID) and reaped when dropped.
#[derive(Debug)]
pub(crate) struct Guard {
    child: Child,
    name: String,
}

impl Guard {
    /// Spawns `cmd` and registers its PID.
    pub(crate) fn spawn(name: &str, cmd: &mut Command) -> anyhow::Result<Guard> {
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name} ({cmd:?})"))?;
        live().push(child.id());
        Ok(Guard {
            child,
            name: name.to_owned(),
        })
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Takes the child's stdin pipe.
    pub(crate) fn take_stdin(&mut self) -> Option<ChildStdin> {
        self.child.stdin.take()
    }

    /// Waits for the child to exit, at most `timeout`; returns whether it exited successfully.
    pub(crate) fn wait_timeout(&mut self, timeout: Duration) -> anyhow::Result<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status.success());
            }
            if Instant::now() >= deadline {
                bail!("{} did not finish within {timeout:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let pid = self.child.id();
        live().retain(|&p| p != pid);
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Reads a child's stdout line by line on a thread, so the pipe never fills.
#[derive(Debug)]
pub(crate) struct Lines {
    rx: mpsc::Receiver<String>,
}

impl Lines {
    fn new(out: impl Read + Send + 'static) -> Lines {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines { rx }
    }

    /// The next line, waiting at most `timeout`; `None` at end of output or on timeout.
    pub(crate) fn next_line(&self, timeout: Duration) -> Option<String> {
        self.rx.recv_timeout(timeout).ok()
    }

    /// Every line until the end of output, waiting at most `timeout` in all.
    pub(crate) fn rest(&self, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut lines = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.rx.recv_timeout(left) {
                Ok(line) => lines.push(line),
                Err(_) => break,
            }
        }
        lines
    }
}

/// A started server: its process and address.
#[derive(Debug)]
pub(crate) struct Server {
    /// The process, killed on drop.
    pub(crate) guard: Guard,
    /// Where it listens.
    pub(crate) addr: SocketAddr,
}

impl Server {
    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.guard.pid()
    }
}

/// Paths the bench uses, all under the cargo target directory.
#[derive(Debug, Clone)]
pub(crate) struct Paths {
    /// The workspace root (for `cargo build`).
    pub(crate) workspace: PathBuf,
    /// `target/` (or `$CARGO_TARGET_DIR`).
    pub(crate) target: PathBuf,
}

impl Paths {
    /// Works out the paths from the bench's own location (`target/<profile>/rpyc-bench`).
    pub(crate) fn discover() -> anyhow::Result<Paths> {
        let exe = std::env::current_exe().context("cannot locate the bench binary")?;
        let target = exe
            .parent()
            .and_then(Path::parent)
            .context("the bench binary is not inside a target directory")?
            .to_path_buf();
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("bench/ has no parent")?
            .to_path_buf();
        Ok(Paths { workspace, target })
    }

    fn logs(&self) -> anyhow::Result<PathBuf> {
        let dir = self.target.join("bench-logs");
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(dir)
    }

    /// The venv holding stock RPyC.
    pub(crate) fn venv(&self) -> PathBuf {
        self.target.join("bench-venv")
    }

    /// The venv's Python.
    pub(crate) fn venv_python(&self) -> PathBuf {
        self.venv().join("bin").join("python")
    }
}

/// Finds (or builds) the release `rpyc-classic`: `$RPYC_CLASSIC_BIN`, else
/// `target/release/rpyc-classic`, built with cargo when `build` is set or when it is missing.
pub(crate) fn ours_binary(paths: &Paths, build: bool) -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("RPYC_CLASSIC_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let bin = paths
        .target
        .join("release")
        .join(format!("rpyc-classic{}", std::env::consts::EXE_SUFFIX));
    if build || !bin.exists() {
        eprintln!("rpyc-bench: cargo build --release -p rpyc-server --bin rpyc-classic");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args([
                "build",
                "--release",
                "-p",
                "rpyc-server",
                "--bin",
                "rpyc-classic",
            ])
            .current_dir(&paths.workspace)
            .status();
        match status {
            Ok(s) if s.success() => {}
            Ok(s) if bin.exists() => {
                eprintln!("rpyc-bench: warning: the build failed ({s}); using the existing binary")
            }
            Ok(s) => bail!("building rpyc-classic failed ({s})"),
            Err(e) if bin.exists() => {
                eprintln!("rpyc-bench: warning: cannot run cargo ({e}); using the existing binary")
            }
            Err(e) => return Err(e).context("cannot run cargo to build rpyc-classic"),
        }
    }
    if !bin.exists() {
        bail!("{} does not exist", bin.display());
    }
    Ok(bin)
}

/// Starts our server on a free port and reads the port from its start line.
pub(crate) fn start_ours(paths: &Paths, bin: &Path) -> anyhow::Result<Server> {
    let log = File::create(paths.logs()?.join("rpyc-classic.log"))?;
    let mut guard = Guard::spawn(
        "rpyc-classic",
        Command::new(bin)
            .args(["--host", "127.0.0.1", "--port", "0", "--log", "warn"])
            .env_remove("VIRTUAL_ENV")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log),
    )?;
    let out = guard.child.stdout.take().context("no stdout pipe")?;
    let lines = Lines::new(out);
    let deadline = Instant::now() + START_TIMEOUT;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let Some(line) = lines.next_line(left) else {
            break;
        };
        // `rpyc-classic: server started on 127.0.0.1:PORT (Python 3.11)`
        if let Some(rest) = line.split("server started on ").nth(1) {
            let addr = rest.split_whitespace().next().unwrap_or_default();
            let addr: SocketAddr = addr
                .parse()
                .with_context(|| format!("cannot parse the start line {line:?}"))?;
            // Keep draining stdout so the server never blocks on it.
            std::thread::spawn(
                move || while lines.next_line(Duration::from_secs(3600)).is_some() {},
            );
            return Ok(Server { guard, addr });
        }
    }
    bail!(
        "rpyc-classic printed no start line within {START_TIMEOUT:?}; see {}",
        paths.target.join("bench-logs/rpyc-classic.log").display()
    )
}

/// Creates `target/bench-venv` with stock RPyC if it is missing, and writes the stock client
/// script into it. Returns the script's path.
pub(crate) fn prepare_venv(paths: &Paths) -> anyhow::Result<PathBuf> {
    let venv = paths.venv();
    let python = paths.venv_python();
    let have_rpyc = python.exists()
        && Command::new(&python)
            .args([
                "-c",
                "import rpyc, sys; sys.exit(rpyc.__version__ != '6.0.2')",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    if !have_rpyc {
        if !python.exists() {
            eprintln!("rpyc-bench: python3 -m venv {}", venv.display());
            let status = Command::new("python3")
                .args(["-m", "venv"])
                .arg(&venv)
                .status()
                .context("cannot run python3 -m venv")?;
            if !status.success() {
                bail!("python3 -m venv {} failed ({status})", venv.display());
            }
        }
        eprintln!("rpyc-bench: pip install {STOCK_RPYC}");
        let status = Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .arg(STOCK_RPYC)
            .status()
            .context("cannot run pip")?;
        if !status.success() {
            bail!("pip install {STOCK_RPYC} failed ({status})");
        }
    }
    let script = venv.join("stock_client.py");
    std::fs::write(&script, include_str!("../stock_client.py"))
        .with_context(|| format!("cannot write {}", script.display()))?;
    Ok(script)
}

/// A free loopback port (bound and released at once).
fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Starts stock `rpyc_classic.py` on a free port and waits until it accepts connections.
pub(crate) fn start_stock(paths: &Paths) -> anyhow::Result<Server> {
    let port = free_port()?;
    let log = File::create(paths.logs()?.join("rpyc_classic.py.log"))?;
    let script = paths.venv().join("bin").join("rpyc_classic.py");
    let mut guard = Guard::spawn(
        "rpyc_classic.py",
        Command::new(paths.venv_python())
            .arg(&script)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log),
    )?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        if let Some(status) = guard.child.try_wait()? {
            bail!("rpyc_classic.py exited at start ({status}); see its log in target/bench-logs");
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(Server { guard, addr });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("rpyc_classic.py did not listen on {addr} within {START_TIMEOUT:?}")
}

/// A running stock client: its process, stdin and stdout lines.
#[derive(Debug)]
pub(crate) struct PyClient {
    /// The process, killed on drop.
    pub(crate) guard: Guard,
    /// Its stdin, if still open.
    pub(crate) stdin: Option<ChildStdin>,
    /// Its stdout.
    pub(crate) lines: Lines,
}

impl PyClient {
    /// Starts `python stock_client.py ARGS…`.
    pub(crate) fn spawn(paths: &Paths, script: &Path, args: &[String]) -> anyhow::Result<PyClient> {
        let mut guard = Guard::spawn(
            "stock_client.py",
            Command::new(paths.venv_python())
                .arg(script)
                .args(args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit()),
        )?;
        let stdin = guard.take_stdin();
        let out = guard.child.stdout.take().context("no stdout pipe")?;
        Ok(PyClient {
            guard,
            stdin,
            lines: Lines::new(out),
        })
    }

    /// Writes one line to its stdin.
    pub(crate) fn send_line(&mut self, line: &str) -> anyhow::Result<()> {
        let stdin = self.stdin.as_mut().context("stdin already closed")?;
        writeln!(stdin, "{line}")?;
        stdin.flush()?;
        Ok(())
    }

    /// Waits for it to finish (at most `timeout`) and parses the JSON on its last line.
    pub(crate) fn finish<T: serde::de::DeserializeOwned>(
        mut self,
        timeout: Duration,
    ) -> anyhow::Result<T> {
        self.stdin = None;
        let lines = self.lines.rest(timeout);
        let ok = self.guard.wait_timeout(Duration::from_secs(5))?;
        let last = lines.last().map(String::as_str).unwrap_or_default();
        if !ok {
            bail!("stock_client.py failed; its last output line: {last:?}");
        }
        serde_json::from_str(last).with_context(|| format!("cannot parse {last:?}"))
    }
}

/// Memory figures of a process, in kB, from `/proc/PID/status`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Mem {
    /// `VmRSS`.
    pub(crate) rss_kb: u64,
    /// `VmHWM` (peak RSS since start or since [`reset_hwm`]).
    pub(crate) hwm_kb: u64,
}

/// Reads `VmRSS` and `VmHWM` of `pid`.
pub(crate) fn mem(pid: u32) -> anyhow::Result<Mem> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status"))?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok(Mem {
        rss_kb: field("VmRSS:"),
        hwm_kb: field("VmHWM:"),
    })
}

/// Resets `VmHWM` of `pid` to its current RSS (`echo 5 > /proc/PID/clear_refs`); returns whether
/// that worked (it needs Linux 4.0+ and the right to write the file).
pub(crate) fn reset_hwm(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// Pins this process (and so every thread and child started later) to CPU 0.
pub(crate) fn pin_to_cpu0() -> anyhow::Result<()> {
    pin_current_thread(0)
}

/// Pins the calling thread (and threads it starts later) to CPU `cpu`; on the main thread
/// before any other exists, that is the whole process.
pub(crate) fn pin_current_thread(cpu: usize) -> anyhow::Result<()> {
    // SAFETY: `set` is a plain bitmask initialised by CPU_ZERO before use, and its size is
    // passed along with it; pid 0 is the calling thread.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        bail!(
            "sched_setaffinity failed: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}
