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
import time
from pathlib import Path

import rpyc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import start_ours, start_stock  # noqa: E402

SMALL_RUNS = 2000
BIG_RUNS = 7
SIZE = 16 * 1024 * 1024


def median_us(fn, runs):
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e6


def measure(server, tmp):
    conn = server.connect()
    try:
        sys_mod = conn.modules.sys
        abs_ = conn.builtins.abs
        lst = conn.eval("list(range(100))")
        remote = str(tmp / f"{server.name}-blob.bin")
        conn.execute(f"open({remote!r}, 'wb').write(bytes(range(256)) * {SIZE // 256})")
        local = tmp / f"{server.name}-copy.bin"
        for _ in range(200):  # warm up
            conn.eval("1+1")
        results = {
            "eval('1+1')": median_us(lambda: conn.eval("1+1"), SMALL_RUNS),
            "getattr sys.platform": median_us(lambda: sys_mod.platform, SMALL_RUNS),
            "call abs(-1)": median_us(lambda: abs_(-1), SMALL_RUNS),
            "len(remote list)": median_us(lambda: len(lst), SMALL_RUNS),
            "ping": median_us(conn.ping, SMALL_RUNS // 4),
            "download 16 MiB": median_us(
                lambda: rpyc.classic.download(conn, remote, str(local)), BIG_RUNS),
            "eval 8 MiB bytes": median_us(lambda: conn.eval(f"b'x' * {SIZE // 2}"), BIG_RUNS),
        }
        assert local.stat().st_size == SIZE
        return results
    finally:
        conn.close()


def main():
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        servers = [start_ours(tmp), start_stock(tmp)]
        try:
            table = {s.name: measure(s, tmp) for s in servers}
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
