"""One content-keyed memo for the theory's expensive pure functions.

A sweep, the paper reproduction or a CLI run that predicts and then probes asks for the same
Bayes floor, population sample and optima many times (every init scale of regime F shares its
data and masking). Each memoised function is a pure function of the configuration sections it
names and of its arguments, so the key is their *content*: the frozen config sections, scalar
arguments, and a SHA-256 digest of every array argument (a batch, a population sample). An
argument the key builder does not know is not guessed at: the call is simply not cached.

Cached results are shared, so their arrays are made read-only: a caller that wants to modify one
must copy it (an in-place edit raises instead of corrupting the next caller's numbers).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections import OrderedDict
from typing import Callable

import numpy as np

_UNKNOWN = object()
_caches: dict[str, OrderedDict] = {}
_stats: dict[str, list[int]] = {}  # name -> [hits, misses]


def _section_key(cfg, sections: tuple[str, ...]):
    out = []
    for s in sections:
        sec = getattr(cfg, s)
        if s == "model":  # the initial scales never enter a population quantity
            sec = tuple((f.name, getattr(sec, f.name)) for f in dataclasses.fields(sec)
                        if not f.name.startswith("init_"))
        out.append((s, sec))
    return tuple(out)


def _digest(arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.asarray(a)
        h.update(str((a.dtype, a.shape)).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _arg_key(x):
    """A hashable stand-in for one argument, or _UNKNOWN."""
    if x is None or isinstance(x, (bool, int, float, str)):
        return (type(x).__name__, x)
    if isinstance(x, (tuple, list)):
        parts = tuple(_arg_key(v) for v in x)
        return _UNKNOWN if any(p is _UNKNOWN for p in parts) else parts
    if isinstance(x, np.ndarray) or hasattr(x, "__array__") and hasattr(x, "dtype"):
        return ("array", _digest([x]))
    if hasattr(x, "_fields"):  # NamedTuple of arrays (an MLMBatch)
        return (type(x).__name__, _digest(getattr(x, f) for f in x._fields))
    if dataclasses.is_dataclass(x) and not isinstance(x, type):  # a PopulationSample
        parts = {}
        for f in dataclasses.fields(x):
            v = getattr(x, f.name)
            parts[f.name] = ("array", _digest([v])) if isinstance(v, np.ndarray) else _arg_key(v)
        if any(p is _UNKNOWN for p in parts.values()):
            return _UNKNOWN
        return (type(x).__name__, tuple(sorted(parts.items())))
    return _UNKNOWN


def _freeze(x):
    """Make the arrays of a result read-only (the result is shared between callers)."""
    if isinstance(x, np.ndarray):
        x.setflags(write=False)
    elif isinstance(x, (tuple, list)):
        for v in x:
            _freeze(v)
    elif isinstance(x, dict):
        for v in x.values():
            _freeze(v)
    elif dataclasses.is_dataclass(x) and not isinstance(x, type):
        for f in dataclasses.fields(x):
            _freeze(getattr(x, f.name))
    return x


def memoized(sections: tuple[str, ...], maxsize: int = 16) -> Callable:
    """Decorator for `fn(cfg, *args, **kw)` that reads only `cfg.<sections>` (plus arguments).

    "model" as a section drops the init_* fields from the key. At most `maxsize` results are kept
    (least recently used first out)."""
    def wrap(fn):
        name = f"{fn.__module__}.{fn.__qualname__}"
        cache = _caches.setdefault(name, OrderedDict())
        stats = _stats.setdefault(name, [0, 0])

        @functools.wraps(fn)
        def cached(cfg, *args, **kw):
            parts = (_arg_key(args), _arg_key(sorted(kw.items())))
            if any(p is _UNKNOWN for p in parts):
                return fn(cfg, *args, **kw)
            key = (_section_key(cfg, sections),) + parts
            if key in cache:
                stats[0] += 1
                cache.move_to_end(key)
                return cache[key]
            stats[1] += 1
            out = _freeze(fn(cfg, *args, **kw))
            cache[key] = out
            if len(cache) > maxsize:
                cache.popitem(last=False)
            return out
        cached.uncached = fn
        return cached
    return wrap


def cache_info() -> dict[str, dict[str, int]]:
    """{function: {"hits", "misses", "size"}} for every memoised theory function."""
    return {k: {"hits": _stats[k][0], "misses": _stats[k][1], "size": len(c)}
            for k, c in _caches.items()}


def clear() -> None:
    """Forget every cached result (e.g. between benchmarks)."""
    for k, c in _caches.items():
        c.clear()
        _stats[k][:] = [0, 0]

