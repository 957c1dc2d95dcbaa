"""One content-keyed memo for the theory's expensive pure functions.

A sweep, the paper reproduction or a CLI run that predicts and then probes asks for the same
Bayes floor, population sample and optima many times (every init scale of regime F shares its
data and masking). Each memoised function is a pure function of the configuration sections it
names and of its arguments, so the key is their *content*: the frozen config sections, scalar
arguments, and a SHA-256 digest of every array argument (a batch, a population sample). An
argument the key builder does not know is not guessed at: the call is simply not cached.

Cached results are shared, so their arrays are made read-only: a caller that wants to modify one
must copy it (an in-place edit raises instead of corrupting the next caller's numbers).

A second tier on disk shares results between processes (runs, sweeps, the reproduction and the
benchmark compute the same floors and optima again and again): one file per result under
`disk_dir()`/<function>/<sha256 of the key>.pkl, where the key includes a digest of topicdyn's
own source files, so any change to the code (a sampler, an estimator) misses instead of
returning a number the new code would not compute. Files are written aside and renamed (a kill
leaves no torn file; a damaged one is recomputed and replaced) and read back with an unpickler
that only builds numpy arrays, plain containers and topicdyn's own result classes (a file in the
cache directory cannot run code). It lives in topicdyn.process.cache_root()/theory:
`TOPICDYN_CACHE=0` turns it off, `TOPICDYN_CACHE=DIR` moves it.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import os
import pickle
from collections import OrderedDict
from pathlib import Path
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


# ---- the disk tier ------------------------------------------------------------------------------
def disk_dir() -> Path | None:
    """Where the disk tier lives (topicdyn.process.cache_root()/theory), or None when the caches
    are off (TOPICDYN_CACHE=0)."""
    from topicdyn.process import cache_root

    root = cache_root()
    return None if root is None else root / "theory"


@functools.cache
def code_version() -> str:
    """SHA-256 of every .py file of the topicdyn package (sorted by path): the disk tier's
    invalidation (a result computed by other code is never returned)."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.py")):
        h.update(p.relative_to(root).as_posix().encode())
        h.update(p.read_bytes())
    return h.hexdigest()


class _SafeUnpickler(pickle.Unpickler):
    """Builds numpy arrays and scalars, builtin containers and topicdyn's own classes only."""

    ALLOWED = ("numpy", "builtins", "collections", "topicdyn.")

    def find_class(self, module, name):
        if module == "builtins" and name not in ("dict", "list", "tuple", "set", "frozenset",
                                                 "float", "int", "complex", "str", "bytes",
                                                 "slice", "range", "bool"):
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in the theory cache")
        if not (module.startswith(self.ALLOWED[3]) or module.split(".")[0] in self.ALLOWED[:3]):
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in the theory cache")
        return super().find_class(module, name)


def _disk_path(name: str, key) -> Path | None:
    d = disk_dir()
    if d is None:
        return None
    h = hashlib.sha256(repr((name, key, code_version())).encode()).hexdigest()
    return d / name / f"{h}.pkl"


def _disk_read(path: Path | None):
    if path is None:
        return _UNKNOWN
    try:
        return _SafeUnpickler(io.BytesIO(path.read_bytes())).load()
    except FileNotFoundError:
        return _UNKNOWN
    except Exception:  # noqa: BLE001 - damaged or foreign: recomputed and written again
        return _UNKNOWN


MAX_FILE_MB = 64  # larger results (log-probabilities of a big vocabulary) stay in memory only
MAX_TOTAL_MB = 1024  # the oldest files go first when the tier outgrows this


def _disk_write(path: Path | None, value) -> None:
    if path is None:
        return
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    if len(data) > MAX_FILE_MB * 2 ** 20:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        _prune(path.parents[1])
    except OSError:  # a read-only or full disk: the result is still returned, just not kept
        pass


def _prune(root: Path) -> None:
    """Delete the least recently written result files while the tier exceeds MAX_TOTAL_MB."""
    files = [(p.stat().st_mtime, p.stat().st_size, p) for p in root.glob("*/*.pkl")]
    total = sum(f[1] for f in files)
    for _, size, p in sorted(files):
        if total <= MAX_TOTAL_MB * 2 ** 20:
            break
        p.unlink(missing_ok=True)
        total -= size


def memoized(sections: tuple[str, ...], maxsize: int = 16) -> Callable:
    """Decorator for `fn(cfg, *args, **kw)` that reads only `cfg.<sections>` (plus arguments).

    "model" as a section drops the init_* fields from the key. At most `maxsize` results are kept
    (least recently used first out)."""
    def wrap(fn):
        name = f"{fn.__module__}.{fn.__qualname__}"
        cache = _caches.setdefault(name, OrderedDict())
        stats = _stats.setdefault(name, [0, 0, 0])  # hits, misses, of the misses: from disk

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
            path = _disk_path(name, key)
            out = _disk_read(path)
            if out is _UNKNOWN:
                out = fn(cfg, *args, **kw)
                _disk_write(path, out)
            else:
                stats[2] += 1
            out = _freeze(out)
            cache[key] = out
            if len(cache) > maxsize:
                cache.popitem(last=False)
            return out
        cached.uncached = fn
        return cached
    return wrap


def cache_info() -> dict[str, dict[str, int]]:
    """{function: {"hits", "misses", "size", "disk_hits"}} for every memoised theory function
    (disk_hits: misses of the memory tier found on disk)."""
    return {k: {"hits": _stats[k][0], "misses": _stats[k][1], "size": len(c),
                "disk_hits": _stats[k][2]} for k, c in _caches.items()}


def clear() -> None:
    """Forget every result cached in memory (e.g. between benchmarks); the disk tier stays."""
    for k, c in _caches.items():
        c.clear()
        _stats[k][:] = [0, 0, 0]

