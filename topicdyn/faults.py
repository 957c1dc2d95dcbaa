"""Fault injection for the crash-consistency tests, and the one-writer lock of a directory.

`crash_point(name, step)`: if the environment variable TOPICDYN_CRASH_AT is "name:step" (or
"name:*"), the process kills itself with SIGKILL right there, exactly as an outside kill at that
instant would. The named points are the steps of the write order (docs in topicdyn/rundir.py).
"a:s&b:t" kills at the later of the two points: the checkpoint saver and the prober are threads
of their own, so which of their writes comes first is not fixed. Unset (always, outside tests)
it costs one dictionary lookup.

`DirLock(dir)`: a lock file `.topicdyn.lock` with the owner's pid and host, created exclusively.
A second writer is refused with one line; a lock left by a process that no longer runs on this
host is taken over.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

from topicdyn.config import ConfigError

LOCK_NAME = ".topicdyn.lock"


_REACHED: set[str] = set()  # the conditions of TOPICDYN_CRASH_AT met so far
_REACHED_LOCK = threading.Lock()


def crash_point(name: str, step: int | None = None) -> None:
    want = os.environ.get("TOPICDYN_CRASH_AT")
    if not want:
        return
    conds = want.split("&")
    for cond in conds:
        where, _, at = cond.partition(":")
        if where == name and (at in ("", "*") or (step is not None and at == str(step))):
            with _REACHED_LOCK:
                _REACHED.add(cond)
                if _REACHED >= set(conds):
                    os.kill(os.getpid(), signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class DirLock:
    """Exclusive writer of `directory` while held (re-entrant within one process)."""

    _held: dict[Path, int] = {}

    def __init__(self, directory: str | Path, what: str = "out"):
        self.dir = Path(directory).absolute()
        self.path = self.dir / LOCK_NAME
        self.what = what

    def _owner(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def acquire(self) -> "DirLock":
        if self._held.get(self.path):
            self._held[self.path] += 1
            return self
        self.dir.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is None:  # being written right now, or a torn file: look again
                    time.sleep(0.05)
                    owner = self._owner()
                stale = owner is None or (owner.get("host") == me["host"]
                                          and not _alive(int(owner.get("pid", -1))))
                if not stale:
                    raise ConfigError(
                        f"{self.what}: {self.dir} is in use by process {owner.get('pid')} on "
                        f"{owner.get('host')}; wait for it to finish (or, if that process is "
                        f"gone, delete {self.path})") from None
                self.path.unlink(missing_ok=True)  # a dead owner's lock: take it over
                continue
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(me))
            self._held[self.path] = 1
            return self
        raise ConfigError(f"{self.what}: could not take the lock {self.path}")

    def release(self) -> None:
        n = self._held.get(self.path, 0)
        if n > 1:
            self._held[self.path] = n - 1
            return
        self._held.pop(self.path, None)
        owner = self._owner()
        if owner and owner.get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
