"""Shared plumbing of the figures: reading a run's files, per-seed series, seed bands, saving.

Figures are built on `matplotlib.figure.Figure` with an Agg canvas (never pyplot), so plotting
needs no display, touches no global matplotlib state and works from any process.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from topicdyn.config import Config, load_config

DPI = 100
COLORS = {"WV": "tab:blue", "E": "tab:green", "QK": "tab:red", "W_dec": "tab:purple",
          "theory": "black", "bayes": "tab:gray"}
MATRIX_LABEL = {"WV": r"$W^V$", "E": r"embedding $E$", "QK": r"$W^Q W^{K\top}$",
                "W_dec": r"decoder $W_{dec}$"}



def read_theory(run_dir: str | Path) -> dict:
    p = Path(run_dir) / "theory.json"
    return json.loads(p.read_text()) if p.exists() else {}


def read_predicted(run_dir: str | Path) -> dict:
    """The run's reduced-dynamics prediction (predicted.json, written by the verdicts:
    topicdyn.predicted), {} where there is none."""
    p = Path(run_dir) / "predicted.json"
    try:
        out = json.loads(p.read_text()) if p.exists() else {}
    except ValueError:
        return {}
    return out if "step" in out else {}


def predicted_line(ax, pred: dict, key: str, label: str, color: str = "black",
                   scale: float = 1.0) -> None:
    """The predicted series pred[key] (divided by scale) dashed over its steps > 0."""
    if not pred or pred.get(key) is None:
        return
    s, v = np.asarray(pred["step"], float), np.asarray(pred[key], float) / scale
    keep = s > 0
    ax.plot(s[keep], v[keep], ls=(0, (4, 2)), color=color, lw=1.3, alpha=0.9,
            label=f"reduced prediction: {label}")


def series(rows: list[dict], key: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(steps (n,), values (n, n_seeds)) of one probes/metrics key, None if absent."""
    rows = [r for r in rows if key in r]
    if not rows:
        return None
    steps = np.array([r["step"] for r in rows], dtype=float)
    vals = np.array([np.atleast_1d(r[key]) for r in rows], dtype=float)
    return steps, vals


def new_figure(width: float, height: float, constrained: bool = True) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained" if constrained else None)
    FigureCanvasAgg(fig)
    return fig


def save(fig: Figure, path: str | Path, dpi: int = DPI) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def band(ax, steps: np.ndarray, vals: np.ndarray, label: str, color: str, ls: str = "-",
         lw: float = 1.8) -> None:
    """Seed mean as a line, min..max over seeds as a band (steps > 0 only: log x axis)."""
    keep = steps > 0
    s, v = steps[keep], vals[keep]
    ax.plot(s, v.mean(1), color=color, ls=ls, lw=lw, label=label)
    if v.shape[1] > 1:
        ax.fill_between(s, v.min(1), v.max(1), color=color, alpha=0.18, lw=0)


def theory_line(ax, y: float | None, label: str, color: str = "black", ls: str = "--") -> None:
    if y is not None and np.isfinite(y):
        ax.axhline(y, ls=ls, color=color, lw=1.2, label=label)


def log_y(ax) -> None:
    """Log y axis with plain tick labels (1.02, not 1.02 x 10^0); minor ticks are labelled only
    when the data span less than a decade. Call after the data are drawn."""
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    ax.set_yscale("log")
    lo, hi = ax.get_ylim()
    narrow = lo > 0 and hi / lo < 10
    if not narrow and hi / max(lo, 1e-300) < 1e3:  # a few decades: ticks at 1, 2, 5 x 10^k
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(FormatStrFormatter("%g") if narrow else NullFormatter())
    ax.tick_params(axis="y", which="minor", labelsize=7)


def log_x(ax) -> None:
    ax.set_xscale("log")
    ax.set_xlabel("training step (log scale)")
    ax.grid(True, which="major", alpha=0.3)


def run_label(cfg: Config, seeds: bool = True) -> str:
    """Short title of a run: preset, loss, init scale, keep probability, seeds."""
    bits = [f"preset {cfg.preset}"]
    if cfg.model.loss != "ce":
        bits.append(f"{cfg.model.loss} loss")
    if cfg.model.embedding == "trained" and cfg.model.value == "trained":
        bits.append(f"init {cfg.model.init_scale:g}")
    if cfg.mask.p_keep != 0.1:
        bits.append(f"p_keep={cfg.mask.p_keep:g}")
    n = cfg.train.n_seeds
    if seeds:
        bits.append(f"{n} seed{'s' if n > 1 else ''}" + (" (band: min..max)" if n > 1 else ""))
    return ", ".join(bits)


def load_checkpoints(run_dir: str | Path, steps: list[int] | None = None):
    """Yield (step, params) for the given (default: every) checkpoint of a run, params as numpy
    with the leading seed axis. One orbax manager for all restores; content hashes checked."""
    import jax

    from topicdyn.checkpoint import (Checkpointer, CheckpointError, list_checkpoints, params_hash,
                                     restore_checked)
    from topicdyn.training import ensemble_seeds, init_state

    cfg = load_config(run_dir)
    index = {r["step"]: r["sha256"] for r in list_checkpoints(run_dir)}
    steps = sorted(index) if steps is None else steps
    ck = Checkpointer(run_dir)
    try:
        like = jax.eval_shape(lambda: init_state(cfg, ensemble_seeds(cfg)))
        for s in steps:
            params = jax.device_get(restore_checked(ck, s, like, run_dir).params)
            if index.get(s) not in (None, params_hash(params)):
                raise CheckpointError(f"checkpoint {s} of {run_dir}: content hash mismatch")
            yield s, params
    finally:
        ck.close()


def seed_params(params: dict, seed: int = 0) -> dict:
    """One ensemble member's params (index into the leading seed axis)."""
    import jax
    return jax.tree.map(lambda x: np.asarray(x)[seed], params)
