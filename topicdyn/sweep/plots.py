"""Sweep figures from sweep_summary.jsonl: a metric over one swept axis (lines with min..max
seed bands, one line per value of the other axes) or two (a heatmap "phase diagram" of the
seed mean, one panel per value of the other axes), with theory predictions overlaid where
theory.json has them (dashed lines; for heatmaps a theory panel and "th" values in the cells).
matplotlib Figure + Agg canvas, never pyplot.
"""
from __future__ import annotations

import itertools
import math
import re
from pathlib import Path

import numpy as np
from matplotlib.colors import LogNorm, Normalize, TwoSlopeNorm

from topicdyn.plots.common import new_figure, save
from topicdyn.sweep.spec import Spec, _fmt
from topicdyn.sweep.summary import THEORY_LABEL, THEORY_OF, read_summary, seed_stats

DEFAULT_METRICS = ("final_loss", "loss/pop_loss", "bayes_gap", "blocks/value_gap",
                   "attention/ratio", "t50/lag")
# metrics whose claim is their sign: a diverging colour map centred on 0, a zero line
SIGNED = {"t50/lag": "> 0: W^V moves first"}
UNITS = {"t50/lag": "steps", "t50/value": "steps", "t50/qk": "steps", "t50/embedding": "steps"}
NOTES = {m: "t50 = first checkpoint with half the final change: it snaps to checkpoint steps"
         for m in UNITS}


def metric_label(metric: str) -> str:
    """The metric with its units and, for a signed metric, what its sign means."""
    bits = [UNITS[metric]] if metric in UNITS else []
    if metric in SIGNED:
        bits.append(SIGNED[metric])
    return metric + (f" ({'; '.join(bits)})" if bits else "")


def seed_sd(rows: list[dict], metric: str) -> float:
    """Standard deviation of a metric over rows (seeds; ddof=1), NaN with fewer than two."""
    v = np.array([r[metric] for r in rows if isinstance(r.get(metric), (int, float))], float)
    v = v[np.isfinite(v)]
    return float(v.std(ddof=1)) if v.size > 1 else math.nan


def _key(v):
    return tuple(v) if isinstance(v, list) else v


def _numeric(vals) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals)


def _values(rows, axis) -> list:
    out = []
    for r in rows:
        if _key(r.get(axis)) not in [_key(v) for v in out]:
            out.append(r.get(axis))
    return sorted(out, key=lambda v: (0, v, "") if _numeric([v]) else (1, 0, _fmt(v)))


def _combos(rows, axes) -> list[dict]:
    """Every combination of values of `axes` present in rows ([{}] if no axes)."""
    vals = [_values(rows, a) for a in axes]
    out = []
    for c in itertools.product(*vals):
        d = dict(zip(axes, c))
        if any(_match(r, d) for r in rows):
            out.append(d)
    return out


def _match(r: dict, d: dict) -> bool:
    return all(_key(r.get(a)) == _key(v) for a, v in d.items())


def _theory_cols(rows, metric) -> list[str]:
    return [c for c in THEORY_OF.get(metric, ()) if any(
        isinstance(r.get(c), (int, float)) for r in rows)]


def plot_line(rows, metric, x, axes, out: Path, title=None, log_x=None, log_y=False) -> Path:
    """metric vs axis x: seed mean with a min..max band; one line per combination of the other
    axes; theory columns dashed in the line's colour."""
    others = [a for a in axes if a != x]
    xs = _values(rows, x)
    numeric = _numeric(xs)
    pos = {_key(v): (v if numeric else i) for i, v in enumerate(xs)}
    fig = new_figure(6.4, 4.2)
    ax = fig.add_subplot()
    colors = [f"C{i}" for i in range(10)]
    for li, combo in enumerate(_combos(rows, others)):
        sub = [r for r in rows if _match(r, combo)]
        px, mean, lo, hi = [], [], [], []
        for v in xs:
            m = seed_stats([r for r in sub if _key(r.get(x)) == _key(v)], metric)
            if math.isfinite(m[0]):
                px.append(pos[_key(v)])
                mean.append(m[0]), lo.append(m[1]), hi.append(m[2])
        if not px:
            continue
        c = colors[li % 10]
        lab = ", ".join(f"{_short(a)}={_fmt(v)}" for a, v in combo.items()) or None
        ax.plot(px, mean, "o-", color=c, label=lab)
        ax.fill_between(px, lo, hi, color=c, alpha=0.2, linewidth=0)
        for ti, tc in enumerate(_theory_cols(sub, metric)):
            ty = [(pos[_key(v)], seed_stats([r for r in sub if _key(r.get(x)) == _key(v)], tc)[0])
                  for v in xs]
            ty = [(a, b) for a, b in ty if math.isfinite(b)]
            if ty:
                ax.plot(*zip(*ty), ("--", ":", "-.")[ti % 3], color=c, alpha=0.8,
                        label=f"theory: {THEORY_LABEL.get(tc, tc)}" + (f" ({lab})" if lab else ""))
    if not numeric:
        ax.set_xticks(range(len(xs)), [_fmt(v) for v in xs])
    elif log_x or (log_x is None and min(xs) > 0 and max(xs) / min(xs) >= 20):
        ax.set_xscale("log")
    if log_y:
        ax.set_yscale("log")
    if metric in SIGNED:
        ax.axhline(0, color="black", lw=0.8)
    ax.set_xlabel(x)
    ax.set_ylabel(metric_label(metric))
    ax.set_title((title or metric) + "\nseed mean, band min..max over seeds"
                 + (f"\n{NOTES[metric]}" if metric in NOTES else ""), fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return save(fig, out, dpi=110)


def color_scale(metric: str, vmin: float, vmax: float, log_color: bool = False):
    """(norm, colour map name) of a heatmap: a signed metric (SIGNED) gets a diverging map
    with white at 0 and symmetric limits, so the sign reads at a glance; others viridis
    (log-scaled with log_color and positive values)."""
    if metric in SIGNED:
        m = max(abs(vmin), abs(vmax), 1e-12)
        return TwoSlopeNorm(0.0, -m, m), "RdBu_r"
    norm = LogNorm(vmin, vmax) if log_color and vmin > 0 else Normalize(vmin, vmax)
    return norm, "viridis"


def plot_heatmap(rows, metric, x, y, axes, out: Path, title=None, log_color=False) -> Path:
    """Seed mean of metric over the (x, y) grid; one panel per combination of the other axes,
    plus the theory prediction's panel where theory.json has one (same colour scale, log if
    log_color and every value is positive)."""
    others = [a for a in axes if a not in (x, y)]
    xs, ys = _values(rows, x), _values(rows, y)
    combos = _combos(rows, others)
    tcols = _theory_cols(rows, metric)[:1]
    note = ""
    if tcols:  # a prediction constant over the whole sweep goes in the title, not a panel
        tv = np.array([r[tcols[0]] for r in rows if isinstance(r.get(tcols[0]), (int, float))])
        if np.allclose(tv, tv[0], rtol=1e-9, atol=0):
            note = f" (theory, {THEORY_LABEL.get(tcols[0], tcols[0])}: {tv[0]:.4g})"
            tcols = []
    panels = [(c, metric) for c in combos] + [(c, t) for c in combos for t in tcols]
    grids, sds = [], []
    for combo, col in panels:
        sub = [r for r in rows if _match(r, combo)]
        g = np.full((len(ys), len(xs)), np.nan)
        sd = np.full_like(g, np.nan)
        for i, vy in enumerate(ys):
            for j, vx in enumerate(xs):
                cell = [r for r in sub if _key(r.get(x)) == _key(vx) and _key(r.get(y)) == _key(vy)]
                g[i, j] = seed_stats(cell, col)[0]
                if col == metric:
                    sd[i, j] = seed_sd(cell, col)
        grids.append(g)
        sds.append(sd)
    finite = np.concatenate([g[np.isfinite(g)] for g in grids]) if grids else np.array([])
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    norm, cmap = color_scale(metric, vmin, vmax, log_color)
    seeds = len({r.get("seed") for r in rows})
    fig = new_figure(1.2 + 0.9 * len(xs) * len(panels) + 1.4, 1.6 + 0.6 * len(ys) + 0.8)
    axs = fig.subplots(1, len(panels), squeeze=False)[0]
    im = None
    for ax, (combo, col), g, sd in zip(axs, panels, grids, sds):
        im = ax.imshow(g, origin="lower", aspect="auto", cmap=cmap, norm=norm)
        for i in range(len(ys)):
            for j in range(len(xs)):
                if np.isfinite(g[i, j]):
                    txt = f"{g[i, j]:.3g}" + (f"\n± {sd[i, j]:.2g}" if np.isfinite(sd[i, j])
                                              else "")
                    level = norm(g[i, j])
                    light = abs(level - 0.5) > 0.3 if metric in SIGNED else level < 0.5
                    ax.text(j, i, txt, ha="center", va="center", fontsize=7,
                            color="white" if light else "black")
        ax.set_xticks(range(len(xs)), [_fmt(v) for v in xs])
        ax.set_yticks(range(len(ys)), [_fmt(v) for v in ys])
        ax.set_xlabel(x)
        ax.set_ylabel(y)
        head = (f"measured: seed mean ± sd ({seeds} seed{'s' if seeds != 1 else ''})"
                if col == metric else f"theory: {THEORY_LABEL.get(col, col)}")
        sub = ", ".join(f"{_short(a)}={_fmt(v)}" for a, v in combo.items())
        ax.set_title(head + (f"\n{sub}" if sub else ""), fontsize=8)
    if im is not None:
        fig.colorbar(im, ax=list(axs), shrink=0.9, label=metric_label(metric))
    fig.suptitle((title or metric) + note + (f"\n{NOTES[metric]}" if metric in NOTES else ""),
                 fontsize=9)
    return save(fig, out, dpi=110)


def _short(axis: str) -> str:
    return ",".join(f.split(".")[-1] for f in axis.split(","))


def _fname(metric: str, x: str, y: str | None) -> str:
    s = "__".join(_short(a) for a in (x, y) if a)
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", f"{metric}__{s}") + ".png"


def default_plots(spec: Spec, rows) -> list[dict]:
    present = [m for m in DEFAULT_METRICS if any(
        isinstance(r.get(m), (int, float)) and math.isfinite(r[m]) for r in rows)]
    ax = list(spec.axes)
    return [{"metric": m, "x": ax[0], "y": ax[1] if len(ax) >= 2 else None} for m in present]


def plot_sweep(spec: Spec, rows: list[dict] | None = None) -> list[Path]:
    """Every figure of the spec's `plots` (default: the main metrics over the first one or two
    axes) into SWEEP_DIR/figures/."""
    rows = read_summary(spec.out) if rows is None else rows
    if not rows:
        return []
    out = []
    for p in spec.plots or default_plots(spec, rows):
        x, y = p.get("x") or spec.axes[0], p.get("y")
        path = spec.out / "figures" / _fname(p["metric"], x, y)
        if not any(isinstance(r.get(p["metric"]), (int, float)) for r in rows):
            continue  # e.g. a probe the model variant does not have
        if y:
            out.append(plot_heatmap(rows, p["metric"], x, y, spec.axes, path, p.get("title"),
                                    p.get("log_color", False)))
        else:
            out.append(plot_line(rows, p["metric"], x, spec.axes, path, p.get("title"),
                                 p.get("log_x"), p.get("log_y", False)))
    return out
