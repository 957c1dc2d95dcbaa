"""Checkpoint schedule, orbax storage with content hashes, and loading for probes.

Layout inside a run directory:
    checkpoints/<step>/...      orbax CheckpointManager (every checkpoint kept)
    checkpoints.jsonl           {"step", "sha256"} per checkpoint: hash of the params' bytes
    checkpoint_files.jsonl      {"step", "files"}: {relative path: sha256} of the step's files
                                on disk (orbax's bytes carry timestamps and random names, so
                                they are kept apart from the deterministic index)
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import logging
import os
import queue
import sys
import threading
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from topicdyn.config import Config, TrainConfig, load_config
from topicdyn.faults import crash_point
from topicdyn.jsonl import read_jsonl


def _os_error(e: BaseException) -> OSError | None:
    """The OSError behind an orbax/tensorstore failure (e.g. disk full), if any."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError):
            return e
        text = str(e)
        for code, word in ((errno.ENOSPC, "No space left"), (errno.EDQUOT, "quota exceeded"),
                           (errno.EIO, "Input/output error"), (errno.EROFS, "Read-only")):
            if word in text:
                return OSError(code, os.strerror(code))
        e = e.__cause__ or e.__context__
    return None


class CheckpointError(ValueError):
    """A stored checkpoint is missing, unreadable or fails its content hash (one-line message)."""


@contextlib.contextmanager
def quiet_orbax():
    """Hold back orbax's error logs (absl) while reading checkpoints: a failure is raised as
    one CheckpointError whose message says it all."""
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        absl.setLevel(level)


FILES_INDEX = "checkpoint_files.jsonl"


def file_hashes(step_dir: Path) -> dict[str, str]:
    """{path relative to step_dir: sha256 of its bytes} for every file of a saved step."""
    out = {}
    for p in sorted(step_dir.rglob("*")):
        if p.is_file():
            out[p.relative_to(step_dir).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _check_files(step: int, run_dir) -> None:
    """Raise CheckpointError when a step's files differ from those its index row recorded.

    Checked before orbax reads anything: a read of damaged chunks fails inside tensorstore's
    threads, which go on printing "Event loop is closed" tracebacks after the failure."""
    rows = {r["step"]: r for r in read_jsonl(Path(run_dir) / FILES_INDEX, skip_bad=True)
            if isinstance(r, dict) and "step" in r}  # the latest row for a step wins
    want = rows.get(step, {}).get("files")
    if not want:  # a run written before the manifest existed: orbax's read decides
        return
    step_dir = Path(run_dir) / "checkpoints" / str(step)
    try:
        got = file_hashes(step_dir)
    except OSError as e:
        raise CheckpointError(f"checkpoint {step} of {run_dir} cannot be read ({e})") from e
    for name in sorted(set(want) | set(got)):
        if want.get(name) != got.get(name):
            what = "missing" if name not in got else (
                "not recorded" if name not in want else "damaged (its hash differs)")
            raise CheckpointError(f"checkpoint {step} of {run_dir}: file {name} is {what}")


def restore_checked(ck, step: int, like, run_dir) -> object:
    """ck.restore(step, like), with damaged files or a failure to read them as a
    CheckpointError."""
    _check_files(step, run_dir)
    try:
        with quiet_orbax():
            return ck.restore(step, like)
    except Exception as e:  # noqa: BLE001 - orbax/tensorstore raise many kinds
        # The read's other in-flight chunks finish after orbax closed its event loop and
        # tensorstore prints "Event loop is closed" tracebacks for them: let them finish
        # into a sink so that the failure stays the one line below.
        sink, real = io.StringIO(), sys.stderr
        sys.stderr = sink
        try:
            time.sleep(0.5)
        finally:
            sys.stderr = real
        msg = str(e).splitlines()[0][:200] if str(e) else ""
        raise CheckpointError(f"checkpoint {step} of {run_dir} cannot be read "
                              f"({type(e).__name__}: {msg})") from e


def checkpoint_steps(tc: TrainConfig) -> list[int]:
    """Sorted checkpoint steps: 0, log-spaced up to ckpt_linear_from, then every ckpt_every,
    and the last step. `ckpt_steps` replaces the schedule (0 and the last step are added)."""
    if tc.ckpt_steps:
        steps = set(tc.ckpt_steps)
    else:
        hi = min(tc.ckpt_linear_from, tc.steps)
        steps = set()
        if tc.ckpt_log_points > 0:
            steps |= {int(round(x)) for x in np.geomspace(1, hi, tc.ckpt_log_points)}
        steps |= set(range(hi, tc.steps + 1, tc.ckpt_every))
    return sorted(steps | {0, tc.steps})


def params_hash(params) -> str:
    """sha256 over every parameter array's name, shape, dtype and bytes."""
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        a = np.asarray(leaf)
        h.update(f"{jax.tree_util.keystr(path)}|{a.shape}|{a.dtype}|".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


class Checkpointer:
    """Saves and restores {"params", "opt_state"} trees of one run with orbax."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir).absolute()
        self.index = self.run_dir / "checkpoints.jsonl"
        opts = ocp.CheckpointManagerOptions(max_to_keep=None, create=True,
                                            enable_async_checkpointing=False)
        with quiet_orbax():  # it reads every step's metadata; a damaged one is raised later
            self.manager = ocp.CheckpointManager(self.run_dir / "checkpoints", options=opts)

    def save(self, step: int, state) -> str:
        """Write order: orbax finalises the step (atomic rename of its temporary directory),
        then its index row is appended. A step without an index row is unfinished: a resume
        never starts from it (topicdyn.rundir.resume_step) and deletes it."""
        host = jax.device_get(state)
        digest = params_hash(host.params)
        crash_point("checkpoint.before_save", step)
        try:
            self.manager.save(step, args=ocp.args.StandardSave(
                {"params": host.params, "opt_state": host.opt_state}), force=True)
            self.manager.wait_until_finished()
        except OSError:
            raise
        except Exception as e:  # noqa: BLE001 - orbax wraps I/O errors (disk full) in others
            cause = _os_error(e)
            if cause is not None:  # named after the checkpoint being written
                raise OSError(cause.errno, cause.strerror, cause.filename
                              or str(self.run_dir / "checkpoints" / str(step))) from e
            raise
        crash_point("checkpoint.saved", step)
        files = file_hashes(self.run_dir / "checkpoints" / str(step))
        with (self.run_dir / FILES_INDEX).open("a") as f:
            f.write(json.dumps({"step": step, "files": files}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        with self.index.open("a") as f:
            f.write(json.dumps({"step": step, "sha256": digest}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        crash_point("checkpoint.indexed", step)
        return digest

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def restore(self, step: int, like):
        """Restore into the structure (and dtypes) of `like`, a state of the same config."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct,
                                {"params": like.params, "opt_state": like.opt_state})
        got = self.manager.restore(step, args=ocp.args.StandardRestore(abstract))
        return type(like)(got["params"], got["opt_state"])

    def close(self):
        self.manager.close()



class BackgroundSaver:
    """Checkpointer.save calls run in order on one worker thread, so that training goes on
    while orbax writes: a save is ~25 ms of thread hand-offs on a CPU, ~80 ms beside the
    probes, and a default run saves 32 checkpoints.

    save() takes a host copy that is the saver's from then on. An error of a save is raised by
    the next save(), flush() or close(); flush() returns when every queued checkpoint is on
    disk and indexed. A kill at any instant leaves what a kill of a synchronous save leaves:
    a step without its index row is unfinished, and a resume starts before it."""

    def __init__(self):
        self._queue: queue.Queue = queue.Queue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="topicdyn-checkpointer",
                                        daemon=True)
        self._thread.start()

    def save(self, checkpointer: Checkpointer, step: int, host_state) -> None:
        self._raise()
        self._queue.put((checkpointer, step, host_state))

    def _work(self):
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                if self._error is None:
                    ck, step, host = item
                    ck.save(step, host)
            except BaseException as e:  # raised in the training thread by _raise
                self._error = e
            finally:
                self._queue.task_done()

    def _raise(self):
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def flush(self) -> None:
        """Wait until every queued checkpoint is written; raise the first save's error."""
        self._queue.join()
        self._raise()

    def close(self, raise_errors: bool = True) -> None:
        """flush() and stop the worker (errors dropped unless raise_errors: closing after
        another error). Closing twice is harmless."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        if raise_errors:
            self._raise()


def list_checkpoints(run_dir: str | Path) -> list[dict]:
    """[{"step", "sha256"}] of a run, in step order (the latest row wins for a step)."""
    p = Path(run_dir) / "checkpoints.jsonl"
    rows = {r["step"]: r for r in read_jsonl(p)}
    return [rows[s] for s in sorted(rows)]


def load_params(run_dir: str | Path, step: int | None = None, verify: bool = True):
    """(params, cfg) of checkpoint `step` (default: the latest). Every params leaf has a leading
    seed axis of length cfg.train.n_seeds. With verify, the content hash is checked."""
    from topicdyn.training import ensemble_seeds, init_state

    cfg: Config = load_config(run_dir)
    ck = Checkpointer(run_dir)
    try:
        steps = ck.steps()
        if not steps:
            raise CheckpointError(f"run_dir: no checkpoints in {run_dir}")
        step = steps[-1] if step is None else step
        if step not in steps:
            raise CheckpointError(f"step: no checkpoint at step {step}; available: {steps}")
        like = jax.eval_shape(lambda: init_state(cfg, ensemble_seeds(cfg)))
        state = restore_checked(ck, step, like, run_dir)
    finally:
        ck.close()
    if verify:
        want = {r["step"]: r["sha256"] for r in list_checkpoints(run_dir)}.get(step)
        got = params_hash(jax.device_get(state.params))
        if want is not None and want != got:
            raise CheckpointError(f"checkpoint {step} of {run_dir}: content hash mismatch")
    return state.params, cfg
