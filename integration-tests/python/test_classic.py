"""Stock ``rpyc.classic`` clients, unchanged, against our server and against stock RPyC (issue 6).

Every test runs against both servers (see conftest.py); a test that fails against stock is a bug
in the test, so each asserts what stock RPyC 6.0.2 really does.
"""

import gc
import hashlib
import os
import sys
import threading
import time
import uuid

import pytest
import rpyc
from rpyc.core.async_ import AsyncResultTimeout
from rpyc.core.netref import BaseNetref
from rpyc.core.vinegar import GenericException


def is_netref(obj):
    return isinstance(obj, BaseNetref)


# --- modules, root, ping ----------------------------------------------------------------------


def test_modules(conn):
    assert conn.modules.sys.platform == sys.platform
    assert conn.modules["os.path"].join("a", "b") == os.path.join("a", "b")
    assert conn.modules.os.path.basename("/x/y.txt") == "y.txt"
    assert "json" in conn.modules
    assert "no_such_module_for_sure" not in conn.modules
    with pytest.raises(ImportError):
        conn.modules["no_such_module_for_sure"]
    assert conn.builtins.abs(-3) == 3
    assert conn.builtin.max(1, 9, 4) == 9
    assert conn.modules.sys.version_info[0] == 3


def test_root_and_ping(conn):
    assert conn.root.get_service_name() == "SLAVE"
    assert tuple(conn.root.get_service_aliases()) == ("SLAVE",)
    conn.ping()
    conn.ping("some other data")


# --- execute / eval with every simple type ------------------------------------------------------

SIMPLE = [
    ("None", None),
    ("True", True),
    ("False", False),
    ("0", 0),
    ("-48", -48),
    ("159", 159),
    ("160", 160),
    ("-(2**63)", -(2**63)),
    ("2**200", 2**200),
    ("-(10**300)", -(10**300)),
    ("1.5", 1.5),
    ("-0.0", -0.0),
    ("float('inf')", float("inf")),
    ("2+3j", 2 + 3j),
    ("''", ""),
    ("'héllo wörld ✓'", "héllo wörld ✓"),
    ("'x' * 5000", "x" * 5000),
    ("b''", b""),
    ("bytes(range(256))", bytes(range(256))),
    ("()", ()),
    ("(1, 'a', (None, 2.5), b'z')", (1, "a", (None, 2.5), b"z")),
    ("tuple(range(300))", tuple(range(300))),
    ("frozenset({1, 2, 'x'})", frozenset({1, 2, "x"})),
    ("slice(1, None, 2)", slice(1, None, 2)),
    ("...", Ellipsis),
    ("NotImplemented", NotImplemented),
]


@pytest.mark.parametrize("expr,expected", SIMPLE, ids=[e for e, _ in SIMPLE])
def test_eval_simple_types_by_value(conn, expr, expected):
    value = conn.eval(expr)
    assert not is_netref(value)
    assert type(value) is type(expected)
    assert value == expected or value is expected
    # And back: the value travels to the server and is compared there.
    conn.namespace["probe"] = value
    assert conn.eval(f"probe == ({expr})") is True


def test_nan_travels(conn):
    value = conn.eval("float('nan')")
    assert value != value


def test_containers_go_by_reference(conn):
    for expr, cls in [("[1, 2]", list), ("{'a': 1}", dict), ("{1, 2}", set),
                      ("bytearray(b'ab')", bytearray), ("(1, [2])", tuple)]:
        value = conn.eval(expr)
        if cls is tuple:
            # A tuple is boxed item by item: the tuple is local, its list a netref.
            assert type(value) is tuple and is_netref(value[1])
        else:
            assert is_netref(value), expr
            assert isinstance(value, cls), expr


def test_execute_and_namespace(conn):
    assert conn.execute("x = 5") is None
    assert conn.namespace["x"] == 5
    assert conn.eval("x * 2") == 10
    # The tutorial's scores.
    conn.execute("scores = {'Foo': 12, 'Bar': 30}")
    conn.namespace["scores"]["Bar"] += 58
    assert conn.eval("scores['Bar']") == 88
    assert sorted(conn.namespace["scores"].keys()) == ["Bar", "Foo"]
    conn.namespace["y"] = 7
    assert conn.eval("x + y") == 12
    conn.execute("def add(a, b=1):\n    return a + b\n")
    assert conn.namespace["add"](2, b=5) == 7
    assert conn.eval("add")(2) == 3


def test_each_connection_has_its_own_namespace(server, conn):
    conn.execute("only_here = 1")
    other = server.connect()
    try:
        assert "only_here" not in other.namespace
        with pytest.raises(NameError):
            other.eval("only_here")
    finally:
        other.close()
    assert conn.eval("only_here") == 1


# --- remote exceptions --------------------------------------------------------------------------


def test_remote_exception_class_and_traceback(conn):
    with pytest.raises(ZeroDivisionError) as info:
        conn.eval("1/0")
    text = str(info.value)
    assert text.startswith("division by zero")
    assert "\n\n========= Remote Traceback (1) =========\n" in text
    assert "Traceback (most recent call last):" in text
    assert 'File "<string>", line 1, in <module>' in text
    assert text.rstrip().endswith("ZeroDivisionError: division by zero")
    assert info.value.args == ("division by zero",)
    assert info.value._remote_version == "6.0.2"

    with pytest.raises(KeyError) as info:
        conn.eval("{}['missing']")
    assert info.value.args == ("missing",)

    with pytest.raises(AttributeError):
        conn.modules.sys.no_such_attribute

    with pytest.raises(OSError) as info:
        conn.builtins.open("/no/such/dir/file.txt")
    assert info.value.errno == 2
    assert isinstance(info.value, FileNotFoundError)

    with pytest.raises(SyntaxError):
        conn.execute("def (")


def test_unknown_exception_class_becomes_generic(conn):
    conn.execute("class MyErr(Exception):\n    pass\n")
    with pytest.raises(GenericException) as info:
        conn.eval("(_ for _ in ()).throw(MyErr('boom', 42))")
    assert type(info.value).__name__ == "builtins.MyErr"
    assert info.value.args == ("boom", 42)
    assert "MyErr: ('boom', 42)" in str(info.value)


def test_system_exit_does_not_end_the_server(server, conn):
    with pytest.raises(SystemExit):
        conn.execute("raise SystemExit(3)")
    assert conn.eval("1 + 1") == 2
    other = server.connect()
    try:
        assert other.eval("2 + 2") == 4
    finally:
        other.close()


# --- netref operations --------------------------------------------------------------------------

CLASSES = """
class Point:
    '''a point'''
    def __init__(self, x, y):
        self.x, self.y = x, y
    def norm2(self, scale=1):
        return (self.x ** 2 + self.y ** 2) * scale
    def __eq__(self, other):
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)
    def __lt__(self, other):
        return (self.x, self.y) < (other.x, other.y)
    def __hash__(self):
        return hash((self.x, self.y))
    def __repr__(self):
        return f'Point({self.x}, {self.y})'
    def __str__(self):
        return f'({self.x}, {self.y})'
    def __len__(self):
        return 2
    def __getitem__(self, i):
        return (self.x, self.y)[i]
    def __iter__(self):
        return iter((self.x, self.y))
    def __contains__(self, v):
        return v in (self.x, self.y)
    def __add__(self, other):
        return Point(self.x + other.x, self.y + other.y)
    def __call__(self, factor):
        return Point(self.x * factor, self.y * factor)

class Managed:
    def __init__(self):
        self.log = []
    def __enter__(self):
        self.log.append('enter')
        return self
    def __exit__(self, typ, exc, tb):
        self.log.append(('exit', typ.__name__ if typ else None))
        return False
"""


def test_netref_operations(conn):
    conn.execute(CLASSES)
    p = conn.eval("Point(3, 4)")
    assert is_netref(p)
    # attributes
    assert p.x == 3
    p.x = 6
    assert p.x == 6
    p.x = 3
    p.extra = "e"
    assert p.extra == "e"
    del p.extra
    assert not hasattr(p, "extra")
    # calls, with keyword arguments
    assert p.norm2() == 25
    assert p.norm2(scale=2) == 50
    q = p(2)
    assert (q.x, q.y) == (6, 8)
    # dunders
    assert len(p) == 2
    assert p[0] == 3 and p[1] == 4
    assert list(p) == [3, 4]
    assert 4 in p and 5 not in p
    assert repr(p) == "Point(3, 4)"
    assert str(p) == "(3, 4)"
    assert "norm2" in dir(p)
    assert (p + p).x == 6
    # comparisons and hashing
    assert p == conn.eval("Point(3, 4)")
    assert p != conn.eval("Point(1, 1)")
    assert conn.eval("Point(1, 1)") < p
    assert hash(p) == conn.eval("hash(Point(3, 4))")
    assert p.__doc__ == "a point"
    # classes and isinstance
    Point = conn.namespace["Point"]
    assert isinstance(p, Point)
    assert not isinstance(conn.eval("Managed()"), Point)
    assert isinstance(conn.eval("[1]"), list)
    assert isinstance(conn.eval("{}"), dict)
    assert isinstance(conn.modules.sys, type(sys))


def test_builtin_containers(conn):
    lst = conn.eval("[3, 1, 2]")
    assert len(lst) == 3
    assert lst[0] == 3 and lst[-1] == 2
    assert list(lst[1:]) == [1, 2]
    assert 1 in lst and 9 not in lst
    assert list(lst) == [3, 1, 2]
    assert sorted(lst) == [1, 2, 3]
    lst.append(4)
    lst[0] = 30
    del lst[1]
    assert list(lst) == [30, 2, 4]
    assert repr(lst) == "[30, 2, 4]"
    d = conn.eval("{'a': 1, 'b': [1, 2]}")
    assert d["a"] == 1 and len(d) == 2
    assert sorted(d.keys()) == ["a", "b"]
    assert "a" in d and "z" not in d
    assert d.get("z", 7) == 7
    assert list(d["b"]) == [1, 2]
    it = iter(conn.eval("range(3)"))
    assert next(it) == 0
    assert list(it) == [1, 2]
    assert [x * 2 for x in conn.eval("(i for i in range(4))")] == [0, 2, 4, 6]


def test_context_managers(conn, tmp_path):
    conn.execute(CLASSES)
    m = conn.eval("Managed()")
    with m as entered:
        assert entered.log[0] == "enter"
    assert list(m.log) == ["enter", ("exit", None)]
    path = tmp_path / "ctx.txt"
    path.write_text("hello")
    with conn.builtins.open(str(path)) as f:
        assert f.read() == "hello"
    assert f.closed


def test_references_are_released(conn):
    conn.execute("import weakref, gc\nclass T:\n    pass\nt = T()\nr = weakref.ref(t)\n")
    proxies = [conn.eval("t") for _ in range(3)]
    conn.execute("del t")
    assert conn.eval("r() is not None")
    del proxies
    gc.collect()
    conn.ping()  # the HANDLE_DEL went before this, on the same connection
    conn.execute("gc.collect()")
    assert conn.eval("r() is None")


# --- upload and import --------------------------------------------------------------------------


def test_upload_and_import(conn, tmp_path):
    name = "uploaded_" + uuid.uuid4().hex[:12]
    local = tmp_path / "local" / f"{name}.py"
    local.parent.mkdir()
    local.write_text("GREETING = 'hi'\n\ndef triple(x):\n    return 3 * x\n")
    remote_dir = tmp_path / "remote"
    remote_dir.mkdir()
    rpyc.classic.upload(conn, str(local), str(remote_dir / f"{name}.py"))
    conn.modules.sys.path.insert(0, str(remote_dir))
    try:
        module = conn.modules[name]
        assert module.GREETING == "hi"
        assert module.triple(14) == 42
    finally:
        conn.modules.sys.path.remove(str(remote_dir))
    # And a download back.
    back = tmp_path / "back.py"
    rpyc.classic.download(conn, str(remote_dir / f"{name}.py"), str(back))
    assert back.read_text() == local.read_text()


# --- callbacks into the client ------------------------------------------------------------------


def test_callbacks(conn):
    calls = []

    def local_func(x, scale=1):
        calls.append(x)
        return x * 10 * scale

    conn.namespace["f"] = local_func
    conn.execute("r = f(3)")
    assert conn.namespace["r"] == 30
    assert conn.eval("f(2, scale=5)") == 100
    assert calls == [3, 2]
    # The server iterates and measures a client-side list.
    assert conn.builtins.sum([1, 2, 3]) == 6
    assert conn.builtins.len([1, 2, 3, 4]) == 4
    assert list(conn.builtins.sorted([3, 1, 2], reverse=True)) == [3, 2, 1]

    class Local:
        def __init__(self):
            self.value = 5

        def bump(self, by):
            self.value += by
            return self.value

    obj = Local()
    conn.namespace["obj"] = obj
    assert conn.eval("obj.bump(2)") == 7
    conn.execute("obj.value = 100")
    assert obj.value == 100


def test_nested_callbacks(conn):
    def client_side(x):
        # client → server again, while the server waits for us
        return conn.eval(f"server_side({x} + 1)") + 1

    conn.namespace["client_side"] = client_side
    conn.execute(
        "def server_side(x):\n"
        "    if x >= 6:\n"
        "        return x\n"
        "    return client_side(x + 1)\n"
    )
    # server(1) → client(2) → server(3) → client(4) → server(5) → client(6) → server(7) = 7,
    # then +1 on each of the three client hops.
    assert conn.eval("server_side(1)") == 10


def test_callback_exceptions_propagate(conn):
    def fails():
        raise ValueError("from the client")

    conn.namespace["fails"] = fails
    with pytest.raises(ValueError) as info:
        conn.execute("fails()")
    text = str(info.value)
    assert "from the client" in text
    assert "========= Remote Traceback (1) =========" in text
    assert "========= Remote Traceback (2) =========" in text
    conn.execute(
        "def guarded():\n"
        "    try:\n"
        "        fails()\n"
        "    except ValueError as e:\n"
        "        return 'caught ' + e.args[0]\n"
    )
    assert conn.eval("guarded()") == "caught from the client"


# --- timeouts -----------------------------------------------------------------------------------


def test_client_timeout_leaves_the_connection_usable(conn):
    conn._config["sync_request_timeout"] = 1
    started = time.monotonic()
    with pytest.raises(AsyncResultTimeout):
        conn.execute("import time; time.sleep(2.5)")
    assert time.monotonic() - started < 2.4
    conn._config["sync_request_timeout"] = 30
    # The late reply to the abandoned call is ignored; new calls are answered once the server
    # finishes the sleep.
    assert conn.eval("40 + 2") == 42
    assert conn.eval("'still' + ' here'") == "still here"


# --- concurrency and size -----------------------------------------------------------------------


def test_four_threads_two_hundred_calls_each(conn):
    errors = []

    def work(t):
        try:
            for i in range(200):
                assert conn.eval(f"{t} * 1000 + {i}") == t * 1000 + i
        except BaseException as e:  # noqa: B036 - report anything to the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert errors == []


def test_eight_mib_both_ways(conn):
    size = 8 * 1024 * 1024
    data = conn.eval(f"b'x' * {size}")
    assert type(data) is bytes and len(data) == size and data == b"x" * size
    blob = os.urandom(size)
    conn.namespace["blob"] = blob
    conn.execute("import hashlib")
    assert conn.eval("hashlib.sha256(blob).hexdigest()") == hashlib.sha256(blob).hexdigest()
    text = conn.eval(f"'é' * {size // 2}")
    assert len(text) == size // 2


# --- pickle-based helpers -----------------------------------------------------------------------


def test_obtain(conn):
    remote = conn.eval("{'a': [1, 2, {'b': (3, 4)}], 'c': {5, 6}}")
    local = rpyc.classic.obtain(remote)
    assert not is_netref(local)
    assert local == {"a": [1, 2, {"b": (3, 4)}], "c": {5, 6}}


def test_deliver_and_teleport(venv_conn):
    conn = venv_conn
    remote = rpyc.classic.deliver(conn, {"k": [1, 2, 3]})
    assert is_netref(remote)
    assert remote["k"][2] == 3
    conn.namespace["delivered"] = remote
    assert conn.eval("sum(delivered['k'])") == 6

    def square_plus(x, extra=1):
        import math
        return x * x + extra + math.floor(0.5)

    teleported = rpyc.classic.teleport_function(conn, square_plus)
    assert teleported(7) == 50
    assert conn.eval("square_plus(3, extra=0)") == 9
    assert conn.teleport(square_plus)(2) == 5


def test_callback_from_another_server_thread(conn):
    calls = []

    def record(x):
        calls.append(x)
        return x + 1

    conn.namespace["record"] = record
    conn.execute(
        "import threading\n"
        "results = []\n"
        "t = threading.Thread(target=lambda: results.append(record(41)))\n"
        "t.start()\n"
        "t.join(30)\n"
    )
    assert calls == [41]
    assert list(conn.namespace["results"]) == [42]


def test_server_survives_a_client_leaving_mid_call(server):
    leaver = server.connect()
    leaver._config["sync_request_timeout"] = 0.3
    with pytest.raises(AsyncResultTimeout):
        leaver.execute("import time; time.sleep(1)")
    leaver._channel.close()  # gone without a goodbye, mid-call
    other = server.connect()
    try:
        assert other.eval("sum(range(10))") == 45
    finally:
        other.close()
    assert server.alive()


def test_more_client_helpers(conn):
    from rpyc.utils.helpers import buffiter

    # BUFFITER: items fetched in chunks.
    assert list(buffiter(conn.eval("iter(range(10))"), chunk=3)) == list(range(10))
    # Asynchronous requests.
    result = rpyc.async_(conn.builtins.sum)((1, 2, 3))
    result.wait()
    assert result.value == 6
    # Classes by reference: called, compared, used with isinstance.
    remote_int = conn.eval("int")
    assert remote_int("42") == 42
    conn.execute("class Base:\n    pass\nclass Derived(Base):\n    pass\n")
    Base = conn.namespace["Base"]
    assert isinstance(conn.eval("Base()"), Base)
    # A subclass instance goes through HANDLE_INSTANCECHECK, which stock answers False unless
    # the instance's class was seen before (a documented rpyc limitation); we answer alike.
    assert isinstance(conn.eval("Derived()"), Base) is False
    assert conn.eval("issubclass")(conn.namespace["Derived"], Base)
    # Mapping types other than dict, through INSPECT.
    environ = conn.modules.os.environ
    assert environ.get("NO_SUCH_VARIABLE_HOPEFULLY") is None
    assert "PATH" in environ
    # getconn() and the root's own attributes stay protected as on stock.
    with pytest.raises(AttributeError):
        conn.root.namespace = {}


def test_client_leaving_during_a_callback(server):
    leaver = server.connect()
    started = threading.Event()

    def slow():
        started.set()
        time.sleep(1.0)
        return 1

    leaver.namespace["slow"] = slow

    def run():
        try:
            leaver.execute("slow()")
        except BaseException:  # noqa: B036 - the connection is torn down under it
            pass

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    assert started.wait(10)
    # The server now waits for slow()'s reply; the client goes away instead.
    leaver._channel.stream.sock.shutdown(2)
    worker.join(10)
    others = [server.connect() for _ in range(4)]
    try:
        results = []

        def use(c, n):
            results.append(sum(c.eval(f"{n} + {i}") for i in range(50)))

        threads = [threading.Thread(target=use, args=(c, n)) for n, c in enumerate(others)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sorted(results) == sorted(50 * n + sum(range(50)) for n in range(4))
    finally:
        for c in others:
            c.close()
    assert server.alive()
    assert "panic" not in server.log()


def test_threads_with_callbacks(conn):
    conn.namespace["double"] = lambda x: 2 * x
    errors = []

    def work(t):
        try:
            for i in range(25):
                assert conn.eval(f"double({t} * 100 + {i})") == 2 * (t * 100 + i)
                assert conn.builtins.sum([t, i]) == t + i
        except BaseException as e:  # noqa: B036 - report anything to the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
