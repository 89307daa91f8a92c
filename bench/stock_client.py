"""Stock RPyC 6.0.2 side of `rpyc-bench` (issue 5).

The bench writes this file into its venv and runs it with the venv's Python against a stock
`rpyc_classic.py` server. Every mode prints one JSON object on its last stdout line; times are
integer nanoseconds from `time.perf_counter_ns()` (or `time.monotonic_ns()` where processes
must agree on a clock). Every loop is bounded both in count and in time.

Modes:
  run PORT PLAN_JSON      run the workloads of the plan on one connection (PLAN_JSON is a list of
                          {"id", "iters", "warmup", "budget_s", "bytes"})
  conc PORT N             connect, warm up, print "ready", wait for a line on stdin, then run N
                          sequential eval('1+1') and print start/end (monotonic ns) and samples
  pipelined PORT N WINDOW N eval('1+1') sent with rpyc.async_ in windows of WINDOW requests
  hold PORT N             open N connections, print "ready", wait for stdin to close
"""

import json
import os
import sys
import time

import rpyc
from rpyc.utils.classic import obtain

HOST = "127.0.0.1"


def connect(port):
    conn = rpyc.classic.connect(HOST, port)
    # The default 30 s is too short for a 64 MiB transfer on a busy 2-core machine.
    conn._config["sync_request_timeout"] = 300
    return conn


def timed(fn, iters, warmup, budget_s):
    """Run fn warmup times untimed, then up to iters times (and at most budget_s seconds)."""
    deadline = time.monotonic() + budget_s
    for _ in range(warmup):
        fn()
        if time.monotonic() > deadline:
            break
    samples = []
    deadline = time.monotonic() + budget_s
    clock = time.perf_counter_ns
    for _ in range(iters):
        t0 = clock()
        fn()
        samples.append(clock() - t0)
        if time.monotonic() > deadline:
            break
    return samples


def workload(conn, port, w):
    """Return the function to time for workload w (setup happens here, untimed)."""
    wid = w["id"]
    size = w.get("bytes") or 0
    if wid == "connect":
        def op():
            c = connect(port)
            c.close()
        return op
    if wid == "ping":
        return conn.ping
    if wid == "eval":
        def op():
            assert conn.eval("1+1") == 2
        return op
    if wid == "getattr":
        def op():
            assert conn.modules.sys.platform
        return op
    if wid == "method_call":
        d = conn.eval("{'a': 1}")

        def op():
            assert d.get("a") == 1
        return op
    if wid == "bound_call":
        d = conn.eval("{'a': 1}")
        get = d.get

        def op():
            assert get("a") == 1
        return op
    if wid == "join":
        def op():
            assert conn.modules.os.path.join("a", "b") == "a/b"
        return op
    if wid == "exception":
        def op():
            try:
                conn.eval("1/0")
            except ZeroDivisionError:
                return
            raise AssertionError("no exception")
        return op
    if wid == "obtain_100k":
        def op():
            assert len(obtain(conn.eval("list(range(100000))"))) == 100000
        return op
    if wid.startswith("download_"):
        conn.execute("import os\nbench_blob = os.urandom(%d)" % size)

        def op():
            assert len(conn.eval("bench_blob")) == size
        return op
    if wid.startswith("upload_"):
        payload = os.urandom(size)
        rlen = conn.builtins.len

        def op():
            assert rlen(payload) == size
        return op
    if wid == "iterate_10k":
        def op():
            n = 0
            for _ in conn.eval("list(range(10000))"):
                n += 1
            assert n == 10000
        return op
    raise ValueError("unknown workload %r" % wid)


def mode_run(port, plan):
    conn = connect(port)
    results = {}
    for w in plan:
        op = workload(conn, port, w)
        results[w["id"]] = timed(op, w["iters"], w["warmup"], w["budget_s"])
        if w["id"].startswith("download_"):
            conn.execute("del bench_blob")
    conn.close()
    print(json.dumps({"samples_ns": results}))


def mode_conc(port, n):
    conn = connect(port)
    for _ in range(200):
        conn.eval("1+1")
    print("ready", flush=True)
    sys.stdin.readline()
    samples = []
    clock = time.perf_counter_ns
    deadline = time.monotonic() + 120
    start = time.monotonic_ns()
    for _ in range(n):
        t0 = clock()
        assert conn.eval("1+1") == 2
        samples.append(clock() - t0)
        if time.monotonic() > deadline:
            break
    end = time.monotonic_ns()
    conn.close()
    print(json.dumps({"start_ns": start, "end_ns": end, "samples_ns": samples}))


def mode_pipelined(port, n, window):
    conn = connect(port)
    aeval = rpyc.async_(conn.eval)
    for _ in range(200):
        conn.eval("1+1")
    samples = []
    clock = time.perf_counter_ns
    deadline = time.monotonic() + 120
    start = clock()
    done = 0
    while done < n and time.monotonic() < deadline:
        batch = [(clock(), aeval("1+1")) for _ in range(min(window, n - done))]
        for t0, res in batch:
            assert res.value == 2
            samples.append(clock() - t0)
        done += len(batch)
    end = clock()
    conn.close()
    print(json.dumps({"wall_ns": end - start, "samples_ns": samples}))


def mode_hold(port, n):
    conns = []
    deadline = time.monotonic() + 120
    for _ in range(n):
        conns.append(connect(port))
        if time.monotonic() > deadline:
            break
    print("ready %d" % len(conns), flush=True)
    sys.stdin.read()
    for c in conns:
        c.close()
    print(json.dumps({"held": len(conns)}))


def main():
    mode, port = sys.argv[1], int(sys.argv[2])
    if mode == "run":
        mode_run(port, json.loads(sys.argv[3]))
    elif mode == "conc":
        mode_conc(port, int(sys.argv[3]))
    elif mode == "pipelined":
        mode_pipelined(port, int(sys.argv[3]), int(sys.argv[4]))
    elif mode == "hold":
        mode_hold(port, int(sys.argv[3]))
    else:
        raise SystemExit("unknown mode %r" % mode)


if __name__ == "__main__":
    main()
