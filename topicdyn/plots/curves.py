"""Dynamics curves over log steps from probes.jsonl / metrics.jsonl, with theory overlays.

Every curve is the seed mean with a min..max band when a run has several seeds; theory values
from theory.json are dashed horizontal lines, the reduced block-symmetric prediction over
training (predicted.json, topicdyn.predicted) a dashed curve. Step 0 is left out (log x axis).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from topicdyn.config import require_run
from topicdyn.jsonl import read_jsonl
from topicdyn.plots.common import (COLORS, MATRIX_LABEL, band, log_x, log_y, new_figure,
                                   predicted_line, read_predicted, read_theory, run_label, save,
                                   series, theory_line)
from topicdyn.plots.matrices import has_attention

TWO_STAGE_KEYS = ("WV", "E", "QK")


def _probes(run_dir) -> list[dict]:
    return read_jsonl(Path(run_dir) / "probes.jsonl")


def plot_blocks(run_dir: str | Path, out: str | Path) -> Path | None:
    """Same-topic minus cross-topic gap of the Gram, value and score maps over training."""
    cfg = require_run(run_dir)
    rows, th = _probes(run_dir), read_theory(run_dir)
    ua, at = th.get("uniform_attention") or {}, th.get("attention") or {}
    panels = []
    if cfg.model.embedding == "trained":
        panels.append(("gram", r"embedding Gram $E E^\top$", None, None, None))
    panels.append(("value", r"value map $E W^V W_{dec}$", ua.get("gap"),
                   "theory: uniform-attention optimum", ua.get("gap_se")))
    if has_attention(cfg):
        panels.append(("score", r"score map $E W^Q W^{K\top} E^\top/\sqrt{d}$",
                       at.get("score_gap"), "theory: regime-A optimum", at.get("score_gap_se")))
    panels = [p for p in panels if series(rows, f"blocks/{p[0]}_gap") is not None]
    if not panels:
        return None
    fig = new_figure(max(6.0, 4.4 * len(panels)), 3.9)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    traj = read_predicted(run_dir)
    for ax, (key, title, pred, plabel, se) in zip(axes, panels):
        s, v = series(rows, f"blocks/{key}_gap")
        band(ax, s, v, "measured", "tab:blue")
        predicted_line(ax, traj, f"{key}_gap", "population gradients", "tab:blue")
        predicted_line(ax, traj.get("batch"), f"{key}_gap", (traj.get("batch") or {}).get(
            "label", ""), "tab:cyan")
        if pred is not None:
            theory_line(ax, pred, f"{plabel} ({pred:.3g}" + (f" ± {se:.2g} s.e.)" if se else ")"))
        ax.axhline(0, color="gray", lw=0.6)
        log_x(ax)
        ax.set_ylabel("mean same-topic - mean cross-topic entry", fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(f"Topic-block gaps (row-centred, content words)\n{run_label(cfg)}",
                 fontsize=10)
    return save(fig, out)


def plot_attention_curves(run_dir: str | Path, out: str | Path) -> Path | None:
    """Same/cross-topic attention ratios (correct and reference labels), normalised attention
    per key category, and attention KL from uniform. None when attention is uniform."""
    cfg = require_run(run_dir)
    rows, at = _probes(run_dir), read_theory(run_dir).get("attention") or {}
    if not has_attention(cfg) or series(rows, "attention/ratio_all") is None:
        return None
    fig = new_figure(14, 3.9)
    ax1, ax2, ax3 = fig.subplots(1, 3)
    for key, label, color, ls in (
            ("ratio_all", "same-topic (incl. identical words) / cross", "tab:blue", "-"),
            ("ratio", "same-topic other words / cross", "tab:orange", "-"),
            ("ref_ratio", "authors' statistic, their labelling", "tab:purple", ":"),
            ("ref_ratio_fixed", "authors' statistic, correct labels", "tab:purple", "-.")):
        sv = series(rows, f"attention/{key}")
        if sv is not None:
            band(ax1, *sv, label, color, ls)
    ax1.axhline(1, color="gray", lw=0.8, label="uniform attention (1)")
    gap, se = at.get("score_gap"), at.get("score_gap_se") or 0.0
    flat = (at.get("gap_profile") or {}).get("flat")
    if at.get("pair_ratio") and gap is not None and se < abs(gap) / 2:
        theory_line(ax1, at["pair_ratio"], f"theory, other words: exp(score gap) = "
                                           f"{at['pair_ratio']:.3g}" + (
                        " (loss flat along the gap: order of magnitude only)" if flat else ""),
                    "tab:orange", ":" if flat else "--")
    elif gap is not None:  # the optimum hardly depends on the gap: no line to draw
        ax1.plot([], [], " ", label=f"theory: score gap undetermined ({gap:.3g} ± {se:.2g} s.e.)")
    predicted_line(ax1, read_predicted(run_dir), "attention_ratio",
                   "exp(score gap), exact per query (pooled: approximation)", "tab:orange")
    log_y(ax1)
    ax1.set_ylabel("attention ratio (log scale)", fontsize=8)
    ax1.set_title("same-topic / cross-topic attention per key", fontsize=9)
    for key, label, color in (("same_token", "identical word", "tab:red"),
                              ("same_topic", "same topic, other word", "tab:green"),
                              ("cross_topic", "other topic", "tab:gray")):
        sv = series(rows, f"attention/{key}")
        if sv is not None:
            band(ax2, *sv, label, color)
    ax2.axhline(1, color="black", lw=0.8, ls="--", label="uniform (1)")
    log_y(ax2)
    ax2.set_ylabel("attention x number of keys (log scale)", fontsize=8)
    ax2.set_title("attention to one key, by key category (correct labels)", fontsize=9)
    sv = series(rows, "attention/kl_uniform")
    if sv is not None:
        band(ax3, *sv, "KL(attention || uniform over keys)", "tab:purple")
    ax3.set_ylabel("nats, mean over content-word queries", fontsize=8)
    ax3.set_title("attention distance from uniform", fontsize=9)
    for ax in (ax1, ax2, ax3):
        log_x(ax)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(f"Attention on the evaluation documents; {run_label(cfg)}", fontsize=10)
    return save(fig, out)


def training_loss_label(metrics: list[dict], cfg) -> str:
    """What metrics.jsonl's loss is: rows with loss_window average the last train.log_every
    steps; a run written before it existed averaged the steps since the previous row."""
    if metrics and "loss_window" in metrics[-1]:
        return f"training loss (mean of the last {cfg.train.log_every} steps)"
    return "training loss (mean since previous log row)"


def _loss_panel(ax, rows, metrics, th, cfg) -> list[float]:
    """Training and eval loss with the theory lines; returns the plateau values drawn."""
    ce = cfg.model.loss == "ce"
    sv = series(metrics, "loss")
    if sv is not None:
        band(ax, *sv, training_loss_label(metrics, cfg), "tab:gray", lw=1.0)
    sv = series(rows, "loss/eval_loss")
    if sv is not None:
        band(ax, *sv, f"eval-set loss ({cfg.train.n_eval} fixed documents)", "tab:blue", lw=0.8)
    sv = series(rows, "loss/pop_loss")
    if sv is not None:
        band(ax, *sv, f"population estimate ({cfg.train.n_pop_eval} documents)", "tab:purple")
    traj = th.get("reduced") or {}
    if traj:
        predicted_line(ax, traj, "loss", f"population gradients (± {traj['loss_se']:.1g})",
                       "tab:purple")
        predicted_line(ax, traj.get("batch"), "loss", (traj.get("batch") or {}).get("label", ""),
                       "tab:pink")
    ua, at = th.get("uniform_attention") or {}, th.get("attention") or {}
    lines = [(ua, "plateau", "theory: uniform-attention optimum", "tab:green", "--"),
             (at, "plateau", "theory: regime-A optimum", "tab:red", "--"),
             (at, "uniform_loss", "uniform attention, block $W^V$", "tab:olive", ":")]
    plateaus = []
    for sec, key, label, color, ls in lines:
        y = sec.get(key)
        if y is not None:
            se = sec.get(f"{key}_se") or 0.0
            theory_line(ax, y, f"{label} ({y:.4g} ± {se:.1g})", color, ls)
            plateaus.append(y)
    reach = (th.get("reachable_floor") or {}).get("name")
    for name, fl in (th.get("floors") or {}).items() if ce else ():
        theory_line(ax, fl["loss"], f"floor {name} ({fl['loss']:.4g})"
                    + (": reachable by this model" if name == reach else ""), "black",
                    "-" if name == reach else ":")
    log_x(ax)
    ax.set_ylabel(f"{'cross-entropy' if ce else 'squared'} loss at selected positions",
                  fontsize=8)
    return plateaus


def plot_loss(run_dir: str | Path, out: str | Path) -> Path | None:
    """Eval loss (and training loss) with the predicted plateau(s) and the Bayes floor, the
    same zoomed on the late phase and the plateaus, and (cross-entropy) the KL from the
    uniform, unigram and Bayes predictors."""
    cfg = require_run(run_dir)
    rows, th = _probes(run_dir), read_theory(run_dir)
    th = {**th, "reduced": read_predicted(run_dir)}
    metrics = read_jsonl(Path(run_dir) / "metrics.jsonl")
    has_kl = cfg.model.loss == "ce" and series(rows, "loss/kl_bayes") is not None
    ev = series(rows, "loss/eval_loss")
    if ev is None and not metrics:
        return None
    n = 3 if has_kl else 2
    fig = new_figure(5.0 * n, 4.1)
    axes = fig.subplots(1, n, squeeze=False)[0]
    plateaus = _loss_panel(axes[0], rows, metrics, th, cfg)
    axes[0].set_title("masked-token loss", fontsize=9)
    axes[0].legend(fontsize=7, loc="upper right")
    _loss_panel(axes[1], rows, metrics, th, cfg)
    s, v = ev if ev is not None else series(metrics, "loss")
    late = v[s >= np.sqrt(max(s.max(), 1.0))].mean(1)  # the second half in log steps
    vals = np.concatenate([late, plateaus]) if late.size else np.asarray(plateaus, float)
    if vals.size:
        lo, hi = float(vals.min()), float(vals.max())
        pad = max(0.15 * (hi - lo), 0.002 * max(abs(hi), 1e-3))
        axes[1].set_ylim(lo - pad, hi + pad)
    axes[1].set_title("zoom: late training and the predicted plateau(s)", fontsize=9)
    if has_kl:
        ax = axes[2]
        for key, label, color in (("kl_uniform", "uniform over content words", "tab:gray"),
                                  ("kl_unigram", "unigram", "tab:olive"),
                                  ("kl_bayes", "Bayes, bayes/query", "black")):
            sv = series(rows, f"loss/{key}")
            if sv is not None:
                band(ax, *sv, label, color, ls=":" if key == "kl_unigram" else "-")
        log_x(ax)
        log_y(ax)
        ax.set_ylabel("KL(predictor || model), nats (log scale)", fontsize=8)
        ax.set_title("distance of the model from simple predictors", fontsize=9)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(f"Loss; {run_label(cfg)}", fontsize=10)
    return save(fig, out)


def normalised_changes(rows: list[dict]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{matrix: (steps, ||W_t - W_0|| / final value per seed)} for the matrices that moved."""
    out = {}
    for name in TWO_STAGE_KEYS:
        sv = series(rows, f"dynamics/delta_{name}")
        if sv is None:
            continue
        s, v = sv
        final = v[-1]
        if np.all(final > 0):
            out[name] = (s, v / final)
    return out


def t50_per_seed(steps: np.ndarray, normalised: np.ndarray) -> np.ndarray:
    from topicdyn.verdicts import t50
    return np.array([t50(steps, normalised[:, i]) for i in range(normalised.shape[1])])


def plot_two_stage(run_dirs: list[str | Path], out: str | Path,
                   labels: list[str] | None = None, title: str | None = None) -> Path | None:
    """Normalised change ||W_t - W_0|| / final of W^V, E and W^Q W^K^T over log steps, one
    panel per run (e.g. different init scales), t50 marked (mean over seeds, bar min..max)."""
    runs = []
    for i, rd in enumerate(run_dirs):
        cfg = require_run(rd)
        ch = normalised_changes(_probes(rd))
        if ch:
            runs.append((labels[i] if labels else run_label(cfg), ch, read_predicted(rd)))
    if not runs:
        return None
    ncol = len(runs) if len(runs) <= 3 else -(-len(runs) // 2)
    nrow = -(-len(runs) // ncol)
    fig = new_figure(max(6.0, 4.6 * ncol), 0.4 + 3.6 * nrow)
    axes = fig.subplots(nrow, ncol, squeeze=False, sharey=True).ravel()
    for ax in axes[len(runs):]:
        ax.set_visible(False)
    for ax, (label, ch, pred) in zip(axes, runs):
        t50s = {}
        for name, (s, v) in ch.items():
            pv = pred.get(f"delta_{name}") if pred else None
            if pv and pv[-1] > 0:
                predicted_line(ax, pred, f"delta_{name}", f"{MATRIX_LABEL[name]}, t50 = "
                               f"{pred['t50'][name]:.0f}", COLORS[name], scale=pv[-1])
            ts = t50_per_seed(s, v)
            t50s[name] = ts
            sd = f" ± {ts.std(ddof=1):.0f}" if ts.size > 1 else ""
            band(ax, s, v, f"{MATRIX_LABEL[name]}: t50 = {ts.mean():.0f}{sd}", COLORS[name])
            ax.errorbar([ts.mean()], [0.5], xerr=[[ts.mean() - ts.min()], [ts.max() - ts.mean()]],
                        fmt="o", color=COLORS[name], ms=6, capsize=3, mec="black", zorder=5)
        ax.axhline(0.5, color="gray", lw=0.7, ls=":")
        log_x(ax)
        sub = label
        if "WV" in t50s and "QK" in t50s:
            lag = t50s["QK"] - t50s["WV"]
            sub += f"\nlag t50(QK) - t50(W^V) = {lag.mean():.0f}" + \
                (f" ± {lag.std(ddof=1):.0f}" if lag.size > 1 else "") + " steps"
        if pred and pred.get("lag") is not None:
            sub += f"; reduced prediction {pred['lag']:.0f}"
        ax.set_title(sub, fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
    for ax in axes[::ncol]:
        ax.set_ylabel(r"$\|W_t - W_0\|_F$ / final value", fontsize=9)
    fig.suptitle(title or "Two-stage dynamics: which matrix moves first\n(t50 = first "
                 "checkpoint with half the final change; bars: min..max over seeds)",
                 fontsize=10)
    return save(fig, out)
