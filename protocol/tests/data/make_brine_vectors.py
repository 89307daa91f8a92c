"""Writes brine_vectors.json: values and the bytes stock ``rpyc.core.brine.dump`` makes of them.

Run with an interpreter that has ``rpyc==6.0.2`` (``bash scripts/python-tests.sh`` makes one at
``target/py-venv``)::

    target/py-venv/bin/python protocol/tests/data/make_brine_vectors.py > protocol/tests/data/brine_vectors.json

Each vector is ``{"name", "value", "hex"}``. ``value`` is a typed tree the Rust test can rebuild
without guessing: ``["none"]``, ``["bool", b]``, ``["int", "decimal text"]``, ``["float", "16 hex
digits of the big-endian IEEE bits"]``, ``["complex", re_bits, im_bits]``, ``["bytes", "hex"]``,
``["str", text]``, ``["tuple", [...]]``, ``["frozenset", [...]]`` (members in the order brine wrote
them), ``["slice", [start, stop, step]]``, ``["ellipsis"]``, ``["notimplemented"]``.
"""

import json
import struct
import sys

import rpyc
from rpyc.core import brine


def typed(v):
    if v is None:
        return ["none"]
    if v is Ellipsis:
        return ["ellipsis"]
    if v is NotImplemented:
        return ["notimplemented"]
    if type(v) is bool:
        return ["bool", v]
    if type(v) is int:
        return ["int", str(v)]
    if type(v) is float:
        return ["float", struct.pack("!d", v).hex()]
    if type(v) is complex:
        return ["complex", struct.pack("!d", v.real).hex(), struct.pack("!d", v.imag).hex()]
    if type(v) is bytes:
        return ["bytes", v.hex()]
    if type(v) is str:
        return ["str", v]
    if type(v) is tuple:
        return ["tuple", [typed(x) for x in v]]
    if type(v) is frozenset:
        return ["frozenset", [typed(x) for x in tuple(v)]]
    if type(v) is slice:
        return ["slice", [typed(v.start), typed(v.stop), typed(v.step)]]
    raise TypeError(f"not brine-dumpable: {v!r}")


VECTORS = [
    ("none", None),
    ("true", True),
    ("false", False),
    ("ellipsis", Ellipsis),
    ("notimplemented", NotImplemented),
    ("int 0", 0),
    ("int 5", 5),
    ("int -7", -7),
    ("int -48 (lowest immediate)", -48),
    ("int 159 (highest immediate)", 159),
    ("int -49", -49),
    ("int 160", 160),
    ("int 1000", 1000),
    ("int i64 max", 2**63 - 1),
    ("int i64 min", -(2**63)),
    ("int 2**63", 2**63),
    ("int -2**63-1", -(2**63) - 1),
    ("int 10**30", 10**30),
    ("int -10**30", -(10**30)),
    ("int 10**254 (255 chars)", 10**254),
    ("int 10**255 (256 chars, INT_L4)", 10**255),
    ("int -10**300", -(10**300)),
    ("float 0.0", 0.0),
    ("float -0.0", -0.0),
    ("float 1.5", 1.5),
    ("float 18.2", 18.2),
    ("float inf", float("inf")),
    ("float -inf", float("-inf")),
    ("float nan", float("nan")),
    ("float subnormal", 5e-324),
    ("float max", sys.float_info.max),
    ("complex 2+3j", 2 + 3j),
    ("complex -0.5-1e300j", complex(-0.5, -1e300)),
    ("bytes empty", b""),
    ("bytes 1", b"a"),
    ("bytes 2", b"ab"),
    ("bytes 3", b"abc"),
    ("bytes 4", b"\x00\xff\n\r"),
    ("bytes 5", b"abcde"),
    ("bytes 255", bytes(range(255))),
    ("bytes 256", bytes(range(256))),
    ("bytes 1000", bytes(i % 251 for i in range(1000))),
    ("str empty", ""),
    ("str x", "x"),
    ("str héllo", "héllo"),
    ("str 4 bytes utf8", "\u20ac\u0041"),
    ("str emoji", "\U0001F600 snake \U0001F40D"),
    ("str 255 bytes", "z" * 255),
    ("str 520 alphabet (ping)", "abcdefghijklmnopqrstuvwxyz" * 20),
    ("str nul and newline", "a\x00b\nc"),
    ("tuple empty", ()),
    ("tuple 1", (1,)),
    ("tuple 2", (1, 2)),
    ("tuple 3", (1, 2, 3)),
    ("tuple 4", (1, 2, 3, 4)),
    ("tuple 5", (1, 2, 3, 4, 5)),
    ("tuple 255", tuple(range(255))),
    ("tuple 256", tuple(range(256))),
    ("tuple 300 mixed", tuple((i, str(i)) if i % 2 else float(i) for i in range(300))),
    ("tuple nested", ("x", (1, None), 2.0)),
    ("tuple deep", ((((((((((1,),),),),),),),),),)),
    ("frozenset empty", frozenset()),
    ("frozenset 1", frozenset({1})),
    ("frozenset 3", frozenset({5, 6, 7})),
    ("frozenset mixed", frozenset({"a", 2.5, (1, 2), None})),
    ("slice 1:None:2", slice(1, None, 2)),
    ("slice all None", slice(None, None, None)),
    ("slice str bounds", slice("a", "z", -1)),
    ("brine docstring example",
     ("he", 7, "llo", 8, (), 900, None, True, Ellipsis, 18.2, 18.2j + 13, slice(1, 2, 3),
      frozenset([5, 6, 7]), NotImplemented)),
    ("id_pack", ("rpyc.core.service.SlaveService", 94760949877232, 139645826693104)),
    ("request GETROOT", (0, (3, (1, ())))),
    ("request GETATTR boxed",
     (13, (4, (2, ((3, ("sys", 139645849810048, 139645842730144)), (1, "platform")))))),
    ("vinegar exception",
     (16, (("builtins", "ZeroDivisionError"), ("division by zero",),
           (("_remote_version", "6.0.2"),),
           "Traceback (most recent call last):\n  File \"<string>\", line 1, in <module>\n"
           "ZeroDivisionError: division by zero\n"))),
]


def main():
    out = []
    for name, value in VECTORS:
        assert brine.dumpable(value), name
        data = brine.dump(value)
        again = brine.load(data)
        assert brine.dump(again) == data, name
        out.append({"name": name, "value": typed(value), "hex": data.hex()})
    # One vector per line, so diffs stay readable.
    sys.stdout.write('{"rpyc_version": %s, "vectors": [\n' % json.dumps(rpyc.__version__))
    sys.stdout.write(",\n".join(json.dumps(v, ensure_ascii=True) for v in out))
    sys.stdout.write("\n]}\n")


if __name__ == "__main__":
    main()
