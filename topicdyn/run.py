"""A single training run: a group of one point through the shared host loop (topicdyn.loop).

Run directory (see topicdyn.loop for the files the loop writes):
    config.json, metrics.jsonl, timing.jsonl, checkpoints/ (+ checkpoints.jsonl)
A new run goes into a missing or empty directory; --resume continues the run saved there from
its latest checkpoint and ends with the same params and metrics as an uninterrupted run.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable

import jax

from topicdyn.config import Config, ConfigError, load_config
from topicdyn.jsonl import read_jsonl
from topicdyn.faults import LOCK_NAME, DirLock
from topicdyn.loop import Group, RunInterrupted, log_steps, member_mesh, param_norms, train_group
from topicdyn.memory import check_memory
from topicdyn.rundir import prepare_point, resume_step, write_config

__all__ = ["RunInterrupted", "check_new_run_dir", "default_run_dir", "log_steps", "param_norms",
           "read_metrics", "train", "write_config"]


def default_run_dir(cfg: Config, root: str | Path = "runs") -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(root) / f"{cfg.preset}-s{cfg.train.seed}-{stamp}"


def check_new_run_dir(run_dir: Path) -> None:
    """A new run may only go into a missing or empty directory (what `topicdyn train` writes
    before training may be there: theory.json, the reduced prediction predicted.json, which
    its background thread can finish first, and a corpus's LDA fit, lda/)."""
    from topicdyn.predicted import FILE as PREDICTED

    if run_dir.exists() and any(p.name not in ("theory.json", PREDICTED, "lda", LOCK_NAME)
                                for p in run_dir.iterdir()):
        raise ConfigError(f"out: {run_dir} already holds a run; pass --resume to continue it or "
                          "choose another directory")


def _resume_step(cfg: Config, run_dir: Path, probed: bool) -> int:
    """The step to continue from (see loop.resume_step); 0 when no checkpoint is usable (killed
    before step 0 was saved, every one damaged, probe rows missing: a deterministic restart
    gives the same result), a ConfigError when the recorded checkpoints were deleted."""
    cfg_path = run_dir / "config.json"
    if not cfg_path.exists():
        raise ConfigError(f"resume: {run_dir} has no config.json to resume from")
    if load_config(run_dir) != cfg:
        raise ConfigError(f"resume: the config differs from the one saved in {cfg_path}; "
                          "resume with the saved config (topicdyn train --resume RUN_DIR)")
    step, gone = resume_step(cfg, run_dir, probed)
    if step >= 0:
        return step
    trained = any(r["step"] > 0 for r in read_jsonl(run_dir / "metrics.jsonl", skip_bad=True))
    # checkpoint 0's index row is written before the first metrics row: metrics without any
    # index row means the checkpoints were deleted
    recorded = read_jsonl(run_dir / "checkpoints.jsonl", skip_bad=True)
    if gone or (trained and not recorded):
        raise ConfigError(f"resume: {run_dir} has no intact checkpoint to resume from (its "
                          "checkpoints were deleted); train it again into a new --out directory")
    if trained:
        print(f"resume: no usable checkpoint in {run_dir}; training again from step 0 (the "
              "result is the same: runs are deterministic)", file=sys.stderr, flush=True)
    return 0


class _RunHook:
    """Adapts a single run's on_checkpoint(step, state, run_dir) to the group loop's hooks.

    The loop's host state holds the member axis padded to a multiple of the device count; the
    run's callback sees its n_seeds members only."""

    def __init__(self, fn: Callable, run_dir: Path, n_seeds: int):
        self.fn, self.run_dir, self.n = fn, run_dir, n_seeds

    def __call__(self, step, host_state, _):
        self.fn(step, jax.tree.map(lambda x: x[:self.n], host_state), self.run_dir)

    def close(self):
        close = getattr(self.fn, "close", None)
        if close is not None:
            close()

    def __getattr__(self, name):  # a prober's counters (pending, submitted, ...) for the bar
        if name == "fn":
            raise AttributeError(name)
        return getattr(self.fn, name)


def train(cfg: Config, run_dir: str | Path | None = None, *, resume: bool = False,
          stop_at: int | None = None, progress: bool = True,
          on_checkpoint: Callable | None = None, log_to: tuple[str, ...] = (),
          probes: bool = False) -> Path:
    """Train cfg.train.n_seeds members together on one device; returns the run directory.

    on_checkpoint(step, state, run_dir) is called after every checkpoint save with the host
    state (probes hook in here); if it has a close() method, that is called before train
    returns (also on errors). With resume=True training continues from the latest checkpoint.
    log_to: experiment trackers that get the same scalars as metrics.jsonl and probes.jsonl
    ("tensorboard": RUN_DIR/tensorboard/, needs the tensorboard extra). probes: probe every
    checkpoint (cfg.train.probes) into probes.jsonl, as `topicdyn train` does (which also
    writes theory.json, verdicts, figures and the report).

        cfg = preset("V", ["train.steps=500"])
        run_dir = train(cfg, "runs/v500", probes=True)   # metrics.jsonl, checkpoints/, ...
    """
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(cfg)
    if probes and on_checkpoint is None:
        from topicdyn.probes.runner import CheckpointProber
        on_checkpoint = CheckpointProber(cfg, run_dir)
    check_memory(cfg, cfg.train.n_seeds)  # before anything is written
    if not resume:
        check_new_run_dir(run_dir)
    with DirLock(run_dir, "resume" if resume else "out"):
        start = _resume_step(cfg, run_dir, on_checkpoint is not None) if resume else 0
        prepare_point(cfg, run_dir, start)
        hooks = None if on_checkpoint is None else (
            lambda _p0: [_RunHook(on_checkpoint, run_dir, cfg.train.n_seeds)])
        from topicdyn.trackers import make_sinks
        sinks = make_sinks(log_to, [run_dir], start)
        train_group(Group([cfg], [run_dir]), member_mesh(), start, hooks,
                    progress=progress, stop_at=stop_at, sinks=sinks)
    return run_dir


def read_metrics(run_dir: str | Path) -> list[dict]:
    """Rows of metrics.jsonl."""
    return read_jsonl(Path(run_dir) / "metrics.jsonl")
