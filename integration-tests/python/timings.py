"""Median timings of the same stock-client calls against rpyc-classic and stock rpyc_classic.py.

    cargo build --release -p rpyc-server --bin rpyc-classic
    RPYC_CLASSIC_BIN=target/release/rpyc-classic target/py-venv/bin/python \
        integration-tests/python/timings.py

Not a test: numbers depend on the machine. Both servers run on loopback with the client in this
process; each figure is the median of many runs.
"""

import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import rpyc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import start_ours, start_stock  # noqa: E402

SMALL_RUNS = 2000
BIG_RUNS = 7
ROUNDS = 20
SIZE = 16 * 1024 * 1024


def threaded_callbacks(conn, threads=4, calls=25):
    """Wall time of `threads` client threads each making `calls` calls that call back."""
    def work():
        for i in range(calls):
            conn.eval(f"f({i})")
    workers = [threading.Thread(target=work) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)


def setup(server, tmp):
    """The same objects on each server; returns {name: (callable, runs)}."""
    conn = server.connect()
    sys_mod = conn.modules.sys
    abs_ = conn.builtins.abs
    lst = conn.eval("list(range(100))")
    remote = str(tmp / f"{server.name}-blob.bin")
    conn.execute(f"open({remote!r}, 'wb').write(bytes(range(256)) * {SIZE // 256})")
    local = str(tmp / f"{server.name}-copy.bin")
    conn.namespace["f"] = lambda x: x * 2
    for _ in range(200):  # warm up
        conn.eval("1+1")
    calls = {
        "eval('1+1')": (lambda: conn.eval("1+1"), SMALL_RUNS),
        "getattr sys.platform": (lambda: sys_mod.platform, SMALL_RUNS),
        "call abs(-1)": (lambda: abs_(-1), SMALL_RUNS),
        "len(remote list)": (lambda: len(lst), SMALL_RUNS),
        "ping": (conn.ping, SMALL_RUNS // 4),
        "callback eval('f(1)')": (lambda: conn.eval("f(1)"), SMALL_RUNS // 4),
        "4 threads x callbacks": (lambda: threaded_callbacks(conn), 3),
        "download 16 MiB": (lambda: rpyc.classic.download(conn, remote, local), BIG_RUNS),
        "eval 8 MiB bytes": (lambda: conn.eval(f"b'x' * {SIZE // 2}"), BIG_RUNS),
    }
    return conn, calls


def measure(servers, tmp):
    """Medians per server and call. Servers take turns in short rounds, so that load from
    elsewhere on the machine hits both alike."""
    setups = {s.name: setup(s, tmp) for s in servers}
    samples = {name: {} for name in setups}
    try:
        for key in next(iter(setups.values()))[1]:
            runs = next(iter(setups.values()))[1][key][1]
            rounds = min(ROUNDS, runs)
            for _ in range(rounds):
                for name, (_, calls) in setups.items():
                    fn = calls[key][0]
                    for _ in range(max(1, runs // rounds)):
                        start = time.perf_counter()
                        fn()
                        samples[name].setdefault(key, []).append(time.perf_counter() - start)
    finally:
        for conn, _ in setups.values():
            conn.close()
    return {name: {k: statistics.median(v) * 1e6 for k, v in per.items()}
            for name, per in samples.items()}


def main():
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        servers = [start_ours(tmp), start_stock(tmp)]
        try:
            table = measure(servers, tmp)
        finally:
            for s in servers:
                s.stop()
    names = list(table)
    print(f"{'call (median)':24}" + "".join(f"{n:>14}" for n in names) + f"{'ratio':>8}")
    for key in table[names[0]]:
        values = [table[n][key] for n in names]
        unit, scale = ("ms", 1e-3) if values[0] > 5000 else ("µs", 1)
        cells = "".join(f"{v * scale:>11.1f} {unit}" for v in values)
        print(f"{key:24}{cells}{values[1] / values[0]:>7.1f}x")
    print(f"(binary: {os.environ.get('RPYC_CLASSIC_BIN', 'target/debug/rpyc-classic')})")


if __name__ == "__main__":
    main()
