"""A single training run: a group of one point through the shared host loop (topicdyn.loop).

Run directory (see topicdyn.loop for the files the loop writes):
    config.json, metrics.jsonl, timing.jsonl, checkpoints/ (+ checkpoints.jsonl)
A new run goes into a missing or empty directory; --resume continues the run saved there from
its latest checkpoint and ends with the same params and metrics as an uninterrupted run.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import jax

from topicdyn.checkpoint import Checkpointer
from topicdyn.config import Config, ConfigError, load_config
from topicdyn.jsonl import read_jsonl
from topicdyn.loop import (Group, RunInterrupted, log_steps, member_mesh, param_norms,
                           prepare_point, train_group, write_config)

__all__ = ["RunInterrupted", "check_new_run_dir", "default_run_dir", "log_steps", "param_norms",
           "read_metrics", "train", "write_config"]


def default_run_dir(cfg: Config, root: str | Path = "runs") -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(root) / f"{cfg.preset}-s{cfg.train.seed}-{stamp}"


def check_new_run_dir(run_dir: Path) -> None:
    """A new run may only go into a missing or empty directory (theory.json may be there)."""
    if run_dir.exists() and any(p.name != "theory.json" for p in run_dir.iterdir()):
        raise ConfigError(f"out: {run_dir} already holds a run; pass --resume to continue it or "
                          "choose another directory")


def _resume_step(cfg: Config, run_dir: Path) -> int:
    cfg_path = run_dir / "config.json"
    if not cfg_path.exists():
        raise ConfigError(f"resume: {run_dir} has no config.json to resume from")
    if load_config(run_dir) != cfg:
        raise ConfigError(f"resume: the config differs from the one saved in {cfg_path}; "
                          "resume with the saved config (topicdyn train --resume RUN_DIR)")
    ck = Checkpointer(run_dir)
    try:
        steps = ck.steps()
    finally:
        ck.close()
    return steps[-1] if steps else 0


class _RunHook:
    """Adapts a single run's on_checkpoint(step, state, run_dir) to the group loop's hooks."""

    def __init__(self, fn: Callable, run_dir: Path):
        self.fn, self.run_dir = fn, run_dir

    def __call__(self, step, host_state, _):
        self.fn(step, host_state, self.run_dir)

    def close(self):
        close = getattr(self.fn, "close", None)
        if close is not None:
            close()


def train(cfg: Config, run_dir: str | Path | None = None, *, resume: bool = False,
          stop_at: int | None = None, progress: bool = True,
          on_checkpoint: Callable | None = None) -> Path:
    """Train cfg.train.n_seeds members together on one device; returns the run directory.

    on_checkpoint(step, state, run_dir) is called after every checkpoint save with the host
    state (probes hook in here); if it has a close() method, that is called before train
    returns (also on errors). With resume=True training continues from the latest checkpoint.
    """
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(cfg)
    if resume:
        start = _resume_step(cfg, run_dir)
    else:
        check_new_run_dir(run_dir)
        start = 0
    prepare_point(cfg, run_dir, start)
    hooks = None if on_checkpoint is None else (lambda _p0: [_RunHook(on_checkpoint, run_dir)])
    train_group(Group([cfg], [run_dir]), member_mesh(jax.devices()[:1]), start, hooks,
                progress=progress, stop_at=stop_at)
    return run_dir


def read_metrics(run_dir: str | Path) -> list[dict]:
    """Rows of metrics.jsonl."""
    return read_jsonl(Path(run_dir) / "metrics.jsonl")
