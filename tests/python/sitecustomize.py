"""Lets singyeong-py's pinned websockets 8.1 run on Python 3.10+.

websockets 8.1 passes `loop=` to asyncio functions and classes that dropped
that parameter in Python 3.10. This module is put on PYTHONPATH by the
interop test only; it removes the keyword before the call, changing nothing
else. The client's own code is used unchanged.
"""

import asyncio
import functools
import inspect


def _drop_loop(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        kwargs.pop("loop", None)
        return fn(*args, **kwargs)

    return wrapper


def _accepts_loop(obj):
    try:
        return "loop" in inspect.signature(obj).parameters
    except (TypeError, ValueError):
        return True


for _name in (
    "sleep",
    "wait_for",
    "wait",
    "gather",
    "shield",
    "as_completed",
    "open_connection",
    "start_server",
    "open_unix_connection",
    "start_unix_server",
):
    _fn = getattr(asyncio, _name, None)
    if _fn is not None and not _accepts_loop(_fn):
        setattr(asyncio, _name, _drop_loop(_fn))

for _name in ("Queue", "LifoQueue", "PriorityQueue", "Event", "Lock", "Condition", "Semaphore", "BoundedSemaphore"):
    _cls = getattr(asyncio, _name, None)
    if _cls is None or _accepts_loop(_cls):
        continue
    _init = _cls.__init__

    def _make_init(original):
        @functools.wraps(original)
        def __init__(self, *args, **kwargs):
            kwargs.pop("loop", None)
            original(self, *args, **kwargs)

        return __init__

    _cls.__init__ = _make_init(_init)
