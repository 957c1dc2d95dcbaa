"""The files of a run directory: their write order, resuming, and repairing them.

Write order (what makes a SIGKILL at any instant resumable to the bit-identical result):
config.json is written atomically before training; per logging point one metrics.jsonl row is
appended; per checkpoint orbax finalises the step (an atomic rename), then its checkpoints.jsonl
row is appended (topicdyn.checkpoint.Checkpointer.save), then the probe row (the prober). A
resume starts at `resume_step` and `prepare_point` drops everything after it: later rows, torn
last lines, unfinished or later orbax steps.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import jax
import orbax.checkpoint as ocp

from topicdyn.checkpoint import FILES_INDEX, Checkpointer
from topicdyn.config import Config
from topicdyn.jsonl import read_jsonl, write_atomic


class PointCheckpointer(Checkpointer):
    """Checkpointer whose orbax manager involves process 0 only (the only writer): orbax's
    default multi-process barriers would wait for processes that never save."""

    def __init__(self, run_dir):
        if jax.process_count() == 1:
            super().__init__(run_dir)
            return
        self.run_dir = Path(run_dir).absolute()
        self.index = self.run_dir / "checkpoints.jsonl"
        (self.run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)  # orbax: create=False
        opts = ocp.CheckpointManagerOptions(
            max_to_keep=None, create=False, enable_async_checkpointing=False,
            multiprocessing_options=ocp.options.MultiprocessingOptions(
                primary_host=0, active_processes={0}))
        self.manager = ocp.CheckpointManager(self.run_dir / "checkpoints", options=opts)


def write_config(cfg: Config, path: Path) -> None:
    """config.json: the Config plus the record of which implementation trains it."""
    from topicdyn.config import RECORD_KEY
    from topicdyn.models.kernels import record

    write_atomic(path, json.dumps({**cfg.to_dict(), RECORD_KEY: record(cfg)}, indent=2,
                                  sort_keys=True) + "\n")


def prepare_point(cfg: Config, run_dir: Path, start: int) -> None:
    """Make a point's directory resume at `start` (0: fresh): config.json written, files after
    `start` dropped (metrics, timing, probes, checkpoint index and orbax steps), verdicts
    removed (rewritten at the end). theory.json is kept."""
    run_dir.mkdir(parents=True, exist_ok=True)
    write_config(cfg, run_dir / "config.json")
    (run_dir / "verdicts.jsonl").unlink(missing_ok=True)
    (run_dir / "diverged.json").unlink(missing_ok=True)
    files = ("metrics.jsonl", "timing.jsonl", "probes.jsonl", "checkpoints.jsonl",
             FILES_INDEX)
    if start == 0:
        for f in files:
            (run_dir / f).unlink(missing_ok=True)
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        return
    for f in files:
        if (run_dir / f).exists():
            truncate_jsonl(run_dir / f, start)
    for p in (run_dir / "checkpoints").glob("*.orbax-checkpoint-tmp*"):
        shutil.rmtree(p, ignore_errors=True)  # a save cut by a kill: never finalised
    ck = PointCheckpointer(run_dir)
    try:
        for s in ck.steps():
            if s > start:
                ck.manager.delete(s)
    finally:
        ck.close()


def resume_step(cfg: Config, run_dir: Path, probed: bool, warn=None) -> tuple[int, bool]:
    """(step to resume from, or -1 for none; whether recorded checkpoints are all gone).

    A step qualifies when orbax finalised it, checkpoints.jsonl has its row (written after the
    save), every earlier checkpoint qualifies and, if probed, it and every earlier checkpoint
    have a probes row. The latest qualifying step is read back and its content hash checked; a
    damaged one is skipped (warn(message)) for the one before."""
    from topicdyn.checkpoint import CheckpointError, load_params

    warn = warn or (lambda m: print(m, file=sys.stderr, flush=True))
    index = {r["step"]: r.get("sha256") for r in
             read_jsonl(run_dir / "checkpoints.jsonl", skip_bad=True)}
    try:
        ck = PointCheckpointer(run_dir)
        try:
            stored = set(ck.steps())
        finally:
            ck.close()
    except Exception:  # noqa: BLE001 - an unreadable checkpoints/ directory: nothing to use
        stored = set()
    probes = {r["step"] for r in read_jsonl(run_dir / "probes.jsonl", skip_bad=True)}
    ok = []
    for s in sorted(index):
        if s not in stored or (probed and s not in probes):
            break
        ok.append(s)
    for s in reversed(ok):
        try:
            load_params(run_dir, s, verify=True)
            return s, False
        except CheckpointError as e:
            warn(f"warning: {e}; resuming from the checkpoint before it")
    # nothing to continue from: the run starts again from step 0 (exact: it is deterministic)
    # unless checkpoints it recorded are gone from disk (deleted): then the caller refuses
    return -1, bool(index) and not any(s in stored for s in index)


def truncate_jsonl(path: Path, last_step: int) -> None:
    """Keep the rows up to last_step, in step order, one per step; torn or damaged lines (an
    interruption, a bad disk) are dropped. Written aside, then renamed over the file."""
    rows = {}
    for row in read_jsonl(path, skip_bad=True):
        if isinstance(row.get("step"), int) and row["step"] <= last_step:
            rows.setdefault(row["step"], row)
    write_atomic(path, "".join(json.dumps(rows[s]) + "\n" for s in sorted(rows)))
