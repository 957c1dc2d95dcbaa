"""Figures of the real-text report: each topic statistic over training on the corpus and on its
LDA-fitted twin, with the shuffled-label null; the losses against the twin's Bayes floors."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from topicdyn.plots.common import band, log_x, new_figure, save
from topicdyn.realtext.runs import MODEL_TEXT, TextRun

COLORS = {"corpus": "tab:blue", "twin": "tab:orange"}
LABELS = {"corpus": "Wikipedia sample", "twin": "LDA-fitted twin"}


def _models(runs: list[TextRun], key: str, trained=None) -> list[str]:
    """Models with a series of `key` (and, if given, trained(cfg) true: a statistic of a
    matrix the model holds fixed says nothing about learning)."""
    return [m for m in MODEL_TEXT if any(
        r.model == m and r.series(key) is not None and (trained is None or trained(r.cfg))
        for r in runs)]


def stat_figure(runs: list[TextRun], key: str, null: str | None, ylabel: str, title: str,
                path: Path, hline: float | None = None, trained=None) -> Path | None:
    """One panel per model (those where trained(cfg), if given): `key` over training on both
    sources (seed mean, min..max band) and the same statistic under shuffled labels
    (`null`_perm_mean +- sd, seed mean; dashed)."""
    models = _models(runs, key, trained)
    if not models:
        return None
    fig = new_figure(3.6 * len(models), 3.0)
    axes = fig.subplots(1, len(models), squeeze=False)[0]
    for ax, m in zip(axes, models):
        for r in runs:
            if r.model != m or r.series(key) is None:
                continue
            s, v = r.series(key)
            band(ax, s, v, LABELS[r.source], COLORS[r.source])
            if null is not None and r.series(f"{null}_perm_mean") is not None:
                s0, mu = r.series(f"{null}_perm_mean")
                _, sd = r.series(f"{null}_perm_sd")
                keep = s0 > 0
                mu, sd = mu.mean(1)[keep], sd.mean(1)[keep]
                ax.plot(s0[keep], mu, color=COLORS[r.source], ls="--", lw=0.9,
                        label=f"{LABELS[r.source]}, shuffled labels (+-1 sd)")
                ax.fill_between(s0[keep], mu - sd, mu + sd, color=COLORS[r.source], alpha=0.08,
                                lw=0)
        if hline is not None:
            ax.axhline(hline, color="gray", lw=0.7)
        log_x(ax)
        ax.set_title(MODEL_TEXT[m], fontsize=9)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.legend(fontsize=6, loc="best")
    fig.suptitle(title, fontsize=10)
    return save(fig, path)


def loss_figure(runs: list[TextRun], path: Path) -> Path | None:
    """Population loss per model: held-out windows of the corpus and fresh twin documents (seed
    band), with the twin's Bayes floors (dotted: bayes/visible; dash-dot: bayes/query)."""
    models = _models(runs, "loss/pop_loss")
    if not models:
        return None
    fig = new_figure(3.6 * len(models), 3.0)
    axes = fig.subplots(1, len(models), squeeze=False)[0]
    for ax, m in zip(axes, models):
        for r in runs:
            if r.model != m or r.series("loss/pop_loss") is None:
                continue
            s, v = r.series("loss/pop_loss")
            band(ax, s, v, LABELS[r.source], COLORS[r.source])
            floors = r.theory.get("floors") or {}
            for name, ls in (("bayes/visible", ":"), ("bayes/query", "-.")):
                if name in floors:
                    ax.axhline(floors[name]["loss"], color="black", ls=ls, lw=0.9,
                               label=f"twin floor {name} ({floors[name]['loss']:.3f})")
        log_x(ax)
        ax.set_title(MODEL_TEXT[m], fontsize=9)
        ax.set_ylabel("population loss (nats)", fontsize=8)
        ax.legend(fontsize=6, loc="best")
    fig.suptitle("Loss at selected positions: held-out Wikipedia windows vs fresh twin "
                 "documents", fontsize=10)
    return save(fig, path)
