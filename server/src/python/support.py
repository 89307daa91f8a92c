"""Server-side helpers of rpyc-classic, installed as the module ``_rpyc_server``.

Loaded once at start-up by ``init.rs``; the Rust worker threads call into it.
"""

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


def format_exception(exc, tb):
    """The traceback text of exc as Python prints it (tb: its traceback, or None)."""
    if tb is not None:
        exc.__traceback__ = tb
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


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
    except Exception:
        message = "<exception str() failed>"
    return (qualified_name(type(exc)), message, format_exception(exc, tb), exception_mro(exc))


def configure_stdio():
    """print() in client code goes to the server's stdout promptly, even when it is a pipe."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(line_buffering=True)
        except Exception:
            pass
