"""Server-side helpers of rpyc-classic, installed as the module ``_rpyc_server``.

Loaded once at start-up by ``init.rs``; the Rust worker threads call into it.
"""

import linecache
import sys
import threading
import time
import traceback


class CancelledByClient(BaseException):
    """Raised inside a request the client cancelled (timeout, dropped call, closed connection).

    A BaseException, so that ``except Exception`` in user code does not swallow it.
    """


# One Event per worker thread (keyed by thread ident): set by a cancel to wake a sleeping call.
_wakeups = {}
_real_sleep = time.sleep


def sleep(seconds):
    """time.sleep that a cancel can interrupt when it runs on a connection's worker thread."""
    wakeup = _wakeups.get(threading.get_ident())
    if wakeup is None:
        return _real_sleep(seconds)
    if seconds < 0:
        raise ValueError("sleep length must be non-negative")
    # A pending CancelledByClient is raised by the interpreter right after wait() returns.
    wakeup.wait(seconds)
    return None


sleep.__doc__ = _real_sleep.__doc__
time.sleep = sleep


def register_worker():
    """Called on each new worker thread; returns its thread ident."""
    ident = threading.get_ident()
    _wakeups[ident] = threading.Event()
    return ident


def unregister_worker():
    _wakeups.pop(threading.get_ident(), None)


def wake(ident):
    """Wakes a worker blocked in sleep() (called after the async exception is set)."""
    wakeup = _wakeups.get(ident)
    if wakeup is not None:
        wakeup.set()


def reset_wakeup():
    wakeup = _wakeups.get(threading.get_ident())
    if wakeup is not None:
        wakeup.clear()


def format_exception(exc, tb, message=None):
    """The traceback text of exc as Python prints it (tb: its traceback, or None; message:
    str(exc) if already known)."""
    if tb is not None:
        exc.__traceback__ = tb
    tb = exc.__traceback__
    cls = type(exc)
    chained = exc.__cause__ is not None or (
        exc.__context__ is not None and not exc.__suppress_context__
    )
    if (
        message is None
        or chained
        or issubclass(cls, (SyntaxError, BaseExceptionGroup))
        or getattr(exc, "__notes__", None) is not None
    ):
        return "".join(traceback.format_exception(cls, exc, tb))
    # The plain case, with no source lines to show (code sent by clients): the same text as
    # traceback.format_exception, about three times faster (it builds a TracebackException
    # twice over). Where a frame has a source line, CPython also marks columns under it: that
    # case takes the full route.
    lines = ["Traceback (most recent call last):\n"] if tb is not None else []
    for frame, lineno in traceback.walk_tb(tb):
        code = frame.f_code
        if linecache.getline(code.co_filename, lineno, frame.f_globals):
            return "".join(traceback.format_exception(cls, exc, tb))
        lines.append('  File "%s", line %s, in %s\n' % (code.co_filename, lineno, code.co_name))
    module = cls.__module__
    name = cls.__qualname__
    if module not in ("__main__", "builtins"):
        name = (module if isinstance(module, str) else "<unknown>") + "." + name
    lines.append("%s: %s\n" % (name, message) if message else "%s\n" % name)
    return "".join(lines)


def qualified_name(cls):
    module = getattr(cls, "__module__", None)
    qualname = getattr(cls, "__qualname__", cls.__name__)
    if module in (None, "builtins"):
        return qualname
    return module + "." + qualname


def type_name(obj):
    cls = type(obj)
    module = getattr(cls, "__module__", None) or "builtins"
    return module + "." + getattr(cls, "__qualname__", cls.__name__)


def exception_mro(exc):
    return [qualified_name(c) for c in type(exc).__mro__[1:] if c is not object]


def describe_exception(exc, tb):
    """(qualified type name, str(exc), traceback text, MRO names) in one call."""
    try:
        message = str(exc)
        known = message
    except Exception:
        message = "<exception str() failed>"
        known = None
    return (
        qualified_name(type(exc)),
        message,
        format_exception(exc, tb, known),
        exception_mro(exc),
    )


def configure_stdio():
    """print() in client code goes to the server's stdout promptly, even when it is a pipe."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(line_buffering=True)
        except Exception:
            pass
