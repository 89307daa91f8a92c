"""Fixtures: the same tests run against our rpyc-classic binary and against stock rpyc_classic.py.

Run through ``scripts/python-tests.sh`` (it makes the venv and builds the binary). Environment:

- ``RPYC_CLASSIC_BIN``: our server binary (default ``target/debug/rpyc-classic``).
- ``RPYC_COMPAT_SERVERS``: comma-separated subset of ``rpyc-rs,stock`` to test against.

Servers are started once per session on free loopback ports, their logs go to files under
pytest's temporary directory (shown when a test fails), and they are killed by PID at the end.
"""

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import rpyc

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 60.0
VENV = Path(sys.prefix)


def _server_names():
    names = os.environ.get("RPYC_COMPAT_SERVERS", "rpyc-rs,stock")
    return [n.strip() for n in names.split(",") if n.strip()]


class Server:
    """A running server process (ours or stock) and where to reach it."""

    def __init__(self, name, proc, host, port, log_path):
        self.name = name
        self.proc = proc
        self.host = host
        self.port = port
        self.log_path = log_path

    def connect(self):
        return rpyc.classic.connect(self.host, self.port)

    def log(self):
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_connectable(proc, port, log_path):
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early:\n{log_path.read_text(errors='replace')}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"server not reachable within {START_TIMEOUT}s")


def start_ours(tmp_dir, extra_args=(), tag="rpyc-rs"):
    binary = os.environ.get("RPYC_CLASSIC_BIN") or str(ROOT / "target" / "debug" / "rpyc-classic")
    log_path = tmp_dir / f"{tag}.log"
    log = open(log_path, "wb")
    env = dict(os.environ)
    env.pop("VIRTUAL_ENV", None)
    env.pop("RUST_LOG", None)
    proc = subprocess.Popen(
        [binary, "--host", "127.0.0.1", "--port", "0", *extra_args],
        stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, env=env,
    )
    log.close()
    # The start line tells the port: "... server started on 127.0.0.1:PORT (Python X.Y.Z)".
    found = {}

    def read_start_line():
        for raw in proc.stdout:
            line = raw.decode(errors="replace")
            if "server started on " in line:
                found["addr"] = line.split("server started on ", 1)[1].split()[0]
                break
        # Keep draining stdout so the server never blocks on a full pipe.
        for _ in proc.stdout:
            pass

    reader = threading.Thread(target=read_start_line, daemon=True)
    reader.start()
    deadline = time.monotonic() + START_TIMEOUT
    while "addr" not in found and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    if "addr" not in found:
        proc.kill()
        proc.wait(timeout=10)
        raise RuntimeError(f"rpyc-classic printed no start line:\n{log_path.read_text(errors='replace')}")
    host, port = found["addr"].rsplit(":", 1)
    return Server(tag, proc, host, int(port), log_path)


def start_stock(tmp_dir, tag="stock"):
    port = _free_port()
    log_path = tmp_dir / f"{tag}.log"
    log = open(log_path, "wb")
    script = VENV / "bin" / "rpyc_classic.py"
    command = [sys.executable, str(script)] if script.exists() else [
        sys.executable, "-m", "rpyc.cli.rpyc_classic"]
    proc = subprocess.Popen(
        [*command, "--host", "127.0.0.1", "--port", str(port)],
        stdout=log, stderr=log, stdin=subprocess.DEVNULL,
    )
    log.close()
    _wait_connectable(proc, port, log_path)
    return Server(tag, proc, "127.0.0.1", port, log_path)


def start(name, tmp_dir, venv=False):
    if name == "stock":
        return start_stock(tmp_dir, tag="stock-venv" if venv else "stock")
    if venv:
        return start_ours(tmp_dir, ["--venv", str(VENV)], tag="rpyc-rs-venv")
    return start_ours(tmp_dir)


@pytest.fixture(scope="session", params=_server_names())
def server(request, tmp_path_factory):
    srv = start(request.param, tmp_path_factory.mktemp(request.param))
    yield srv
    srv.stop()


@pytest.fixture(scope="session", params=_server_names())
def venv_server(request, tmp_path_factory):
    """A server whose Python can import rpyc (needed by ``deliver`` and ``teleport_function``):
    ours started with ``--venv``, stock as it is."""
    srv = start(request.param, tmp_path_factory.mktemp(request.param + "-venv"), venv=True)
    yield srv
    srv.stop()


def _connect(srv, request):
    conn = srv.connect()
    yield conn
    try:
        conn.close()
    except Exception:
        pass
    assert srv.alive(), f"{srv.name} died:\n{srv.log()[-4000:]}"


@pytest.fixture
def conn(server, request):
    yield from _connect(server, request)


@pytest.fixture
def venv_conn(venv_server, request):
    yield from _connect(venv_server, request)


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        for name in ("server", "venv_server"):
            srv = item.funcargs.get(name)
            if isinstance(srv, Server):
                report.sections.append((f"{srv.name} log (tail)", srv.log()[-6000:]))
