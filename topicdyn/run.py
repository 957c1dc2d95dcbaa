"""A training run, top to bottom: config.json, the compiled chunk loop, metrics and checkpoints.

Run directory:
    config.json        the full Config
    metrics.jsonl      one row per logging point: step, loss (mean over the steps since the last
                       row), grad and param norms per group; every list has one entry per seed
    timing.jsonl       wall-clock throughput (kept apart so metrics are bit-reproducible)
    checkpoints/       orbax, plus checkpoints.jsonl with a content hash per checkpoint
Every checkpoint step is also a logging step, so a resumed run writes exactly the rows an
uninterrupted run would.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Callable

import jax
import numpy as np

from topicdyn.checkpoint import Checkpointer, checkpoint_steps
from topicdyn.config import Config, ConfigError, load_config
from topicdyn.jsonl import read_jsonl
from topicdyn.training import ensemble_seeds, group_norms, init_state, make_chunk_fn


class RunInterrupted(Exception):
    """Raised by `train(..., stop_at=s)` after the checkpoint at step s (used to test resume)."""


def log_steps(cfg: Config) -> list[int]:
    """Steps after which a metrics row is written (includes every checkpoint step > 0)."""
    tc = cfg.train
    steps = set(range(tc.log_every, tc.steps + 1, tc.log_every)) | set(checkpoint_steps(tc))
    return sorted(s for s in steps if s > 0)


def default_run_dir(cfg: Config, root: str | Path = "runs") -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(root) / f"{cfg.preset}-s{cfg.train.seed}-{stamp}"



def _truncate_jsonl(path: Path, last_step: int) -> None:
    rows = [r for r in read_jsonl(path) if r["step"] <= last_step]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def check_new_run_dir(run_dir: Path) -> None:
    """A new run may only go into a missing or empty directory (theory.json may be there)."""
    if run_dir.exists() and any(p.name != "theory.json" for p in run_dir.iterdir()):
        raise ConfigError(f"out: {run_dir} already holds a run; pass --resume to continue it or "
                          "choose another directory")


def _prepare_dir(cfg: Config, run_dir: Path, resume: bool) -> None:
    cfg_path = run_dir / "config.json"
    if resume:
        if not cfg_path.exists():
            raise ConfigError(f"resume: {run_dir} has no config.json to resume from")
        saved = load_config(run_dir)
        if saved != cfg:
            raise ConfigError(f"resume: the config differs from the one saved in {cfg_path}; "
                              "resume with the saved config (topicdyn train --resume RUN_DIR)")
        return
    check_new_run_dir(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_config(cfg, cfg_path)


def write_config(cfg: Config, path: Path) -> None:
    """config.json: the Config plus the record of which implementation trains it."""
    from topicdyn.config import RECORD_KEY
    from topicdyn.models.kernels import record

    path.write_text(json.dumps({**cfg.to_dict(), RECORD_KEY: record(cfg)}, indent=2,
                               sort_keys=True) + "\n")


def train(cfg: Config, run_dir: str | Path | None = None, *, resume: bool = False,
          stop_at: int | None = None, progress: bool = True,
          on_checkpoint: Callable | None = None) -> Path:
    """Train cfg.train.n_seeds members together; returns the run directory.

    on_checkpoint(step, state, run_dir) is called after every checkpoint save (probes hook in
    here); if it has a close() method, that is called before train returns (also on errors).
    With resume=True training continues from the latest checkpoint and ends with the same
    params and metrics as an uninterrupted run.
    """
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(cfg)
    _prepare_dir(cfg, run_dir, resume)
    seeds = ensemble_seeds(cfg)
    state = init_state(cfg, seeds)
    ckpt = Checkpointer(run_dir)
    ckpts = set(checkpoint_steps(cfg.train))
    metrics_path, timing_path = run_dir / "metrics.jsonl", run_dir / "timing.jsonl"
    start = 0
    if resume and ckpt.steps():
        start = ckpt.steps()[-1]
        state = ckpt.restore(start, state)
        _truncate_jsonl(metrics_path, start)
        _truncate_jsonl(timing_path, start)
        if (run_dir / "probes.jsonl").exists():
            _truncate_jsonl(run_dir / "probes.jsonl", start)
        ckpt.truncate_index(start)
    elif resume:
        for p in (metrics_path, timing_path, ckpt.index, run_dir / "probes.jsonl"):
            p.unlink(missing_ok=True)
    if start == 0:
        ckpt.save(0, state)
        if on_checkpoint:
            on_checkpoint(0, state, run_dir)

    chunk_fn = make_chunk_fn(cfg)
    K, total = cfg.train.chunk, cfg.train.steps
    tokens_per_step = cfg.data.batch_size * (cfg.data.N_min + cfg.data.N_max) / 2
    bar = _progress_bar(total, start, progress)
    window: list[np.ndarray] = []
    step, t_last, s_last = start, time.perf_counter(), start
    try:
        for boundary in (b for b in log_steps(cfg) if b > start):
            while step < boundary:
                n = min(K, boundary - step)
                state, m = chunk_fn(state, seeds, np.int32(step), np.int32(n))
                window.append(np.asarray(m["loss"])[:n])
                last_grad = jax.tree.map(lambda x: np.asarray(x)[n - 1], m["grad_norm"])
                step += n
                bar.update(n)
            losses = np.concatenate(window)  # (steps in window, n_seeds)
            window = []
            pnorm = jax.device_get(param_norms(cfg)(state.params))
            row = {"step": step, "loss": _floats(losses.mean(0)),
                   "loss_last": _floats(losses[-1]),
                   "grad_norm": {g: _floats(v) for g, v in last_grad.items()},
                   "param_norm": {g: _floats(v) for g, v in pnorm.items()}}
            with metrics_path.open("a") as f:
                f.write(json.dumps(row) + "\n")
            now = time.perf_counter()
            rate = (step - s_last) / max(now - t_last, 1e-9)
            with timing_path.open("a") as f:
                f.write(json.dumps({"step": step, "steps_per_s": rate,
                                    "tokens_per_s": rate * tokens_per_step * cfg.train.n_seeds})
                        + "\n")
            t_last, s_last = now, step
            bar.set_postfix(loss=f"{float(losses[-1].mean()):.4f}", steps_s=f"{rate:.0f}")
            if step in ckpts:
                ckpt.save(step, state)
                if on_checkpoint:
                    on_checkpoint(step, state, run_dir)
                if stop_at is not None and step >= stop_at and step < total:
                    raise RunInterrupted(f"stopped at step {step}")
    finally:
        bar.close()
        ckpt.close()
        close = getattr(on_checkpoint, "close", None)
        if close is not None:  # e.g. a background prober: wait for its last rows
            close()
    return run_dir


_NORMS: dict = {}


def param_norms(cfg: Config):
    """jit(vmap(params -> {group: norm})) for cfg's variant (cached per config)."""
    if cfg not in _NORMS:
        _NORMS[cfg] = jax.jit(jax.vmap(lambda p: group_norms(p, cfg)))
    return _NORMS[cfg]


def _floats(a) -> list[float]:
    return [float(x) for x in np.atleast_1d(np.asarray(a, dtype=np.float64))]


class _NoBar:
    def update(self, n):
        pass

    def set_postfix(self, **kw):
        pass

    def close(self):
        pass


def _progress_bar(total: int, start: int, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm
    return tqdm(total=total, initial=start, unit="step", file=sys.stderr, dynamic_ncols=True)


def read_metrics(run_dir: str | Path) -> list[dict]:
    """Rows of metrics.jsonl."""
    return read_jsonl(Path(run_dir) / "metrics.jsonl")
