//! Runs every example of `rpyc-examples` against a live server and checks what it prints
//! (issue 3), so the programs new users copy from cannot break unnoticed.
//!
//! The examples are built once (`cargo build -p rpyc-examples --examples`) and run as
//! processes with the server's address as their argument. The examples that need the server
//! restarted or stopped print a line asking for it; the test does it when it reads that line.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use rpyc_client::blocking::Connection;
use rpyc_integration_tests::TestServer;

/// Longest an example may run.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// `target/<profile>/examples/`, with the examples built (once per test run).
fn examples_dir() -> anyhow::Result<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            rpyc_integration_tests::cargo_build(&["-p", "rpyc-examples", "--examples"])?;
            Ok(rpyc_integration_tests::profile_dir()?.join("examples"))
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// What an example printed.
struct Run {
    stdout: String,
}

/// Runs example `name` against `server`; `on_line` sees each line of its output as it comes
/// (to restart or stop the server when asked).
fn run_example(
    name: &str,
    server: &mut TestServer,
    mut on_line: impl FnMut(&str, &mut TestServer) -> anyhow::Result<()>,
) -> anyhow::Result<Run> {
    let bin = examples_dir()?.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    let mut child = Command::new(&bin)
        .arg(server.url())
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let (lines_tx, lines) = mpsc::channel();
    let out = child.stdout.take().context("no stdout")?;
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut err = child.stderr.take().context("no stderr")?;
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = err.read_to_string(&mut text);
        text
    });

    let deadline = Instant::now() + RUN_TIMEOUT;
    let mut stdout = String::new();
    let outcome: anyhow::Result<ExitStatus> = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                stdout.push_str(&line);
                stdout.push('\n');
                if let Err(e) = on_line(&line, server) {
                    break Err(e);
                }
            }
            // Output closed: the example is ending.
            Err(RecvTimeoutError::Disconnected) => break wait(&mut child, deadline),
            Err(RecvTimeoutError::Timeout) => {
                break Err(anyhow::anyhow!("did not finish within {RUN_TIMEOUT:?}"));
            }
        }
    };
    if outcome.is_err() {
        // Our own child, by its handle.
        let _ = child.kill();
        let _ = child.wait();
    }
    let stderr = stderr.join().unwrap_or_default();
    let context = || {
        format!(
            "example {name}\n--- stdout:\n{stdout}--- stderr:\n{stderr}--- server log:\n{}",
            server.stderr()
        )
    };
    let status = outcome.with_context(context)?;
    if !status.success() {
        bail!("exited with {status}\n{}", context());
    }
    ensure!(!stderr.contains("panicked"), "{}", context());
    Ok(Run { stdout })
}

/// Waits for the child to exit, until `deadline`.
fn wait(child: &mut std::process::Child, deadline: Instant) -> anyhow::Result<ExitStatus> {
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        ensure!(
            Instant::now() < deadline,
            "did not exit within {RUN_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn no_action(_: &str, _: &mut TestServer) -> anyhow::Result<()> {
    Ok(())
}

impl Run {
    /// Checks that these lines appear, in this order (other lines may come between).
    fn expect_lines<S: AsRef<str>>(&self, expected: &[S]) -> anyhow::Result<()> {
        let mut lines = self.stdout.lines();
        for want in expected {
            let want = want.as_ref();
            ensure!(
                lines.any(|l| l == want),
                "missing line (or out of order): {want:?}\nstdout:\n{}",
                self.stdout
            );
        }
        Ok(())
    }

    /// The first line starting with `prefix`, without the prefix.
    fn after(&self, prefix: &str) -> anyhow::Result<&str> {
        self.stdout
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .with_context(|| format!("no line starting {prefix:?}\nstdout:\n{}", self.stdout))
    }

    /// The number in `… {prefix}NUMBER{unit}…`.
    fn number(&self, prefix: &str, unit: &str) -> anyhow::Result<f64> {
        let rest = self.after(prefix)?;
        let number = rest
            .split(unit)
            .next()
            .with_context(|| format!("no {unit:?} after {prefix:?}"))?;
        number
            .trim()
            .parse()
            .with_context(|| format!("not a number after {prefix:?}: {rest:?}"))
    }
}

#[test]
fn modules() -> anyhow::Result<()> {
    let mut server = TestServer::start()?;
    let conn = Connection::connect(server.url())?;
    let version: String = conn.eval("__import__('sys').version")?;
    let platform: String = conn.eval("__import__('sys').platform")?;
    let cwd: String = conn.eval("__import__('os').getcwd()")?;
    let joined: String = conn.eval("__import__('os').path.join('usr', 'lib', 'python3')")?;
    let run = run_example("modules", &mut server, no_action)?;
    run.expect_lines(&[
        format!("sys.version  = {}", version.replace('\n', " ")),
        format!("sys.platform = {platform}"),
        format!("os.getcwd()  = {cwd}"),
        format!("os.path.join('usr', 'lib', 'python3') = {joined}"),
    ])
}

#[test]
fn variables() -> anyhow::Result<()> {
    let mut server = TestServer::start()?;
    let run = run_example("variables", &mut server, no_action)?;
    run.expect_lines(&[
        "x = 6",
        "after `x *= 7`: x = 42",
        r#"copied by value: {"Bar": 30, "Baz": 99, "Foo": 12}"#,
        "local copy Foo = 0, remote Foo = 12",
        "remote scores['Bar'] before: 30",
        "remote scores['Bar'] after += 58: 88",
        r#"remote scores now: {"Bar": 88, "Baz": 99, "Foo": 12}"#,
    ])
}

#[test]
fn exception() -> anyhow::Result<()> {
    let mut server = TestServer::start()?;
    let run = run_example("exception", &mut server, no_action)?;
    run.expect_lines(&[
        "Traceback (most recent call last):",
        r#"    conn.execute("z = x/y")"#,
        "ZeroDivisionError: division by zero",
        "",
        "========= Remote Traceback (1) =========",
        "Traceback (most recent call last):",
        r#"  File "<string>", line 1, in <module>"#,
        "ZeroDivisionError: division by zero",
        "caught ZeroDivisionError: division by zero",
        "caught ZeroDivisionError as an ArithmeticError",
        "carrying on with y = 4: z = 0.25",
    ])?;
    // The local frame names the line of the call in the example's source.
    let frame = run.after("  File \"")?;
    let (file, rest) = frame.split_once("\", line ").context("no line number")?;
    let line: usize = rest.split(',').next().unwrap_or_default().parse()?;
    ensure!(file.ends_with("exception.rs"), "{frame}");
    let source = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/examples/exception.rs"),
    )?;
    let at = source.lines().nth(line - 1).unwrap_or_default();
    ensure!(at.contains("conn.execute(code)"), "line {line} is {at:?}");
    Ok(())
}

#[test]
fn upload_code() -> anyhow::Result<()> {
    let mut server = TestServer::start()?;
    let run = run_example("upload_code", &mut server, no_action)?;
    let fib = |n: u32| (0..n).fold((0u128, 1u128), |(a, b), _| (b, a + b)).0;
    let mut expected: Vec<String> = [0, 1, 2, 10, 20, 50, 90, 100]
        .iter()
        .map(|&n| format!("fib({n}) = {}", fib(n)))
        .collect();
    expected.push(format!("remote_code.fib(30) = {}", fib(30)));
    run.expect_lines(&expected)?;
    let origin = run.after("imported remote_code from ")?;
    ensure!(
        origin.contains("rpyc-upload-") && origin.ends_with("remote_code.py"),
        "{origin}"
    );
    ensure!(run.after("removed ")?.ends_with(": true"), "{}", run.stdout);
    Ok(())
}

#[test]
fn timeout() -> anyhow::Result<()> {
    let mut server = TestServer::start()?;
    let run = run_example("timeout", &mut server, no_action)?;
    let timeout = run.number("request timeout: ", " ms")?;
    for call in ["sleep", "loop"] {
        let waited = run.number(&format!("{call}: timeout error after "), " ms")?;
        ensure!(
            (timeout * 0.9..=timeout * 1.1).contains(&waited),
            "{call}: the timeout error came after {waited} ms (timeout {timeout} ms)"
        );
        let next = run.number(&format!("{call}: next call answered in "), " ms")?;
        ensure!(next < 200.0, "{call}: the next call took {next} ms");
    }
    run.expect_lines(&[
        r#"sleep: marker = "before" (the rest of the cancelled call did not run)"#,
    ])?;
    ensure!(
        run.after("loop: interrupted after ")?
            .ends_with("; 0 more since"),
        "the loop went on: {}",
        run.stdout
    );
    Ok(())
}

#[test]
fn ping() -> anyhow::Result<()> {
    let mut server = TestServer::start()?;
    let run = run_example("ping", &mut server, |line, server| {
        if line.starts_with("stop the server now") {
            server.kill();
        }
        Ok(())
    })?;
    let idle = number_in(run.after("idle ping: ")?, "median ")?;
    ensure!(idle < 50.0, "idle ping median {idle} ms");
    let busy = run.after("busy ping: ")?;
    let median = number_in(busy, "median ")?;
    let max = number_in(busy, "max ")?;
    ensure!(median < 50.0, "ping while busy: {busy}");
    ensure!(max < 250.0, "ping while busy: {busy}");
    run.expect_lines(&["the 5 s call was still running after those pings: true"])?;
    let took = run.number("the 5 s call took ", " s")?;
    ensure!((5.0..6.0).contains(&took), "the 5 s call took {took} s");
    let failed = run.number("dead server: ping failed after ", " ms")?;
    ensure!(
        failed < 100.0,
        "the ping to the dead server took {failed} ms"
    );
    let text = run.after("dead server: ping failed after ")?;
    ensure!(
        text.contains(&format!("connection to {} closed", server.url())),
        "{text}"
    );
    // Refused, or (while the killed process is still closing its listening socket) accepted
    // by the kernel and then reset during the greeting: both are a fast, clear error.
    let text = run.after("dead server: connecting failed after ")?;
    ensure!(
        text.contains("cannot connect to") || text.contains("cannot read the greeting of"),
        "{text}"
    );
    Ok(())
}

/// The number after `label` in `text` (up to the next space).
fn number_in(text: &str, label: &str) -> anyhow::Result<f64> {
    let rest = text
        .split(label)
        .nth(1)
        .with_context(|| format!("no {label:?} in {text:?}"))?;
    Ok(rest.split(' ').next().unwrap_or_default().parse()?)
}

#[test]
fn reconnect_objects() -> anyhow::Result<()> {
    let mut server = TestServer::start()?;
    let first_pid = server.pid();
    let run = run_example("reconnect_objects", &mut server, |line, server| {
        if line.starts_with("restart the server now") {
            server.restart()?;
        }
        Ok(())
    })?;
    let second_pid = server.pid();
    ensure!(first_pid != second_pid);
    let url = server.url();
    ensure!(
        run.after("before: ")?.starts_with(&format!(
            "server pid {first_pid}, data = [1, 2, 3] (<remote builtins.list #"
        )),
        "{}",
        run.stdout
    );
    run.expect_lines(&[
        "reconnected (1 reconnect)".to_owned(),
        "new server: NameError: name 'data' is not defined".into(),
        "forced reconnect: 2 reconnects, previous data stale: true".into(),
    ])?;
    for (label, type_name) in [
        ("old data: ", "builtins.list"),
        ("old os: ", "builtins.module"),
    ] {
        let text = run.after(label)?;
        ensure!(
            text.starts_with(&format!("<remote {type_name} #"))
                && text.contains(&format!("is from a previous connection to {url}"))
                && text.contains("get a fresh object"),
            "{text}"
        );
    }
    let failed = run.number("old objects failed in ", " ms")?;
    ensure!(failed < 100.0, "stale objects took {failed} ms to fail");
    ensure!(
        run.after("after: ")?
            .starts_with(&format!("server pid {second_pid}, data = [1, 2, 3, 4]")),
        "{}",
        run.stdout
    );
    Ok(())
}

#[test]
fn with_reconnect() -> anyhow::Result<()> {
    let mut server = TestServer::start()?;
    let first_pid = server.pid();
    let run = run_example("with_reconnect", &mut server, |line, server| {
        if line.starts_with("restart the server now") {
            server.restart()?;
        }
        Ok(())
    })?;
    let second_pid = server.pid();
    run.expect_lines(&[
        format!("call 1: state['calls'] = 1 on server pid {first_pid}"),
        format!("call 3: state['calls'] = 3 on server pid {first_pid}"),
    ])?;
    ensure!(
        run.after("reconnect #1: ")?.contains("attempt(s) in "),
        "{}",
        run.stdout
    );
    // After the reconnect the setup script restored `state` and counting starts again.
    let after: Vec<&str> = run
        .stdout
        .lines()
        .filter(|l| l.ends_with(&format!("on server pid {second_pid}")))
        .collect();
    ensure!(after.len() == 3, "calls on the new server: {after:?}");
    for (n, line) in (1..).zip(&after) {
        ensure!(line.contains(&format!("state['calls'] = {n} on")), "{line}");
    }
    let in_flight = run.after("the in-flight call failed: ")?;
    ensure!(
        in_flight.contains(&format!("connection to {} closed", server.url()))
            && in_flight.contains("not sent again"),
        "{in_flight}"
    );
    run.expect_lines(&["reconnects: 1; the new server counted 3 calls (none re-sent)"])?;
    Ok(())
}
