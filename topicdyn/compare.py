"""`topicdyn compare RUN_A RUN_B ...`: several runs (or sweep points) overlaid, their claims side
by side.

Figures (one colour per run, theory dashed in the run's colour, seed bands min..max):
  loss.png       the population loss estimate (else the eval-set loss) against each run's
                 reachable Bayes floor and its uniform-attention plateau
  blocks.png     same - cross topic gaps of the value map, score map and embedding Gram
  attention.png  same-topic / cross-topic attention ratios (log scale; 1 = no topic bias)
  t50.png        t50 of W^V, E and W^Q W^K^T per run (mean, bar min..max over seeds; t50
                 snaps to checkpoint steps)
comparison.md has the claims table (claim x run: verdict and measured value at each run's last
checkpoint) and links the figures. A sweep directory stands for all its points.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from topicdyn.config import Config, ConfigError, require_run
from topicdyn.jsonl import read_jsonl

COLORS = [f"C{i}" for i in range(10)]


def expand(paths: list[str | Path]) -> list[Path]:
    """Run directories: a sweep directory (sweep.json) stands for its points, in spec order."""
    out = []
    for p in map(Path, paths):
        if (p / "sweep.json").exists():
            points = json.loads((p / "sweep.json").read_text()).get("points", [])
            out += [p / "points" / q["name"] for q in points
                    if (p / "points" / q["name"] / "config.json").exists()]
        else:
            require_run(p)
            out.append(p)
    if len(out) < 1:
        raise ConfigError("runs: nothing to compare (the sweep has no point yet)")
    return out


def _flat_config(cfg: Config) -> dict:
    out = {}
    for s, sec in cfg.to_dict().items():
        if isinstance(sec, dict):
            out.update({f"{s}.{k}": v for k, v in sec.items()})
        else:
            out[s] = sec
    return out


def labels_for(run_dirs: list[Path]) -> list[str]:
    """Short labels: the config fields that differ between the runs (at most three), else the
    directory names."""
    flats = [_flat_config(require_run(d)) for d in run_dirs]
    keys = [k for k in flats[0] if len({json.dumps(f.get(k), sort_keys=True) for f in flats}) > 1]
    if not keys or len(keys) > 3:
        names = [d.name for d in run_dirs]
        return names if len(set(names)) == len(names) else [str(d) for d in run_dirs]
    show = lambda v: v if isinstance(v, str) else json.dumps(v)  # noqa: E731
    return [", ".join(f"{k.split('.')[-1]}={show(f.get(k))}" for k in keys) for f in flats]


def _probes(d: Path) -> list[dict]:
    return read_jsonl(d / "probes.jsonl")


def _theory(d: Path) -> dict:
    from topicdyn.plots.common import read_theory
    return read_theory(d)


def _loss_panel(ax, runs) -> list[float]:
    """Each run's loss curve with its floor and plateau; returns the late-phase values and
    the theory lines drawn (for the zoomed panel's limits)."""
    from topicdyn.plots.common import band, log_x, series, theory_line

    ys = []
    for (d, label, cfg), c in zip(runs, COLORS * 10):
        rows, th = _probes(d), _theory(d)
        for key, what in (("loss/pop_loss", f"population estimate ({cfg.train.n_pop_eval} "
                                            "documents)"),
                          ("loss/eval_loss", f"eval set, {cfg.train.n_eval} documents")):
            sv = series(rows, key)
            if sv is not None:
                band(ax, *sv, f"{label}: {what}", c)
                s, v = sv
                ys += list(v[s >= np.sqrt(max(s.max(), 1.0))].mean(1))
                break
        reach = (th.get("reachable_floor") or {}).get("name")
        floor = (th.get("floors") or {}).get(reach or "", {})
        if floor.get("loss") is not None and cfg.model.loss == "ce":
            theory_line(ax, floor["loss"], f"{label}: floor {reach} ({floor['loss']:.4g})", c,
                        "--")
            ys.append(floor["loss"])
        ua = th.get("uniform_attention") or {}
        if ua.get("plateau") is not None:
            theory_line(ax, ua["plateau"], f"{label}: uniform-attention optimum "
                                           f"({ua['plateau']:.4g})", c, ":")
            ys.append(ua["plateau"])
    log_x(ax)
    ax.set_ylabel("loss at selected positions", fontsize=8)
    return ys


def plot_loss(runs, out: Path) -> Path | None:
    from topicdyn.plots.common import new_figure, save, series

    if not any(series(_probes(d), k) is not None for d, _, _ in runs
               for k in ("loss/pop_loss", "loss/eval_loss")):
        return None
    fig = new_figure(13, 4.8)
    ax1, ax2 = fig.subplots(1, 2)
    _loss_panel(ax1, runs)
    ax1.set_title("whole run", fontsize=9)
    ax1.legend(fontsize=6, loc="upper right")
    ys = np.asarray(_loss_panel(ax2, runs), float)
    ys = ys[np.isfinite(ys)]
    if ys.size:
        lo, hi = float(ys.min()), float(ys.max())
        pad = max(0.15 * (hi - lo), 0.002 * max(abs(hi), 1e-3))
        ax2.set_ylim(lo - pad, hi + pad)
    ax2.set_title("zoom: late training (second half in log steps) and the theory lines",
                  fontsize=9)
    fig.suptitle("Loss against each run's reachable Bayes floor (dashed) and uniform-attention "
                 "plateau (dotted)\nseed mean, band min..max over seeds", fontsize=9)
    return save(fig, out)


def plot_blocks(runs, out: Path) -> Path | None:
    from topicdyn.plots.common import band, log_x, new_figure, save, series, theory_line

    panels = [(k, t) for k, t in (("value", r"value map $E W^V W_{dec}$"),
                                  ("score", r"score map $E W^Q W^{K\top} E^\top/\sqrt{d}$"),
                                  ("gram", r"embedding Gram $E E^\top$"))
              if any(series(_probes(d), f"blocks/{k}_gap") is not None for d, _, _ in runs)]
    if not panels:
        return None
    fig = new_figure(4.6 * len(panels), 4.2)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (key, title) in zip(axes, panels):
        for (d, label, _), c in zip(runs, COLORS * 10):
            sv = series(_probes(d), f"blocks/{key}_gap")
            if sv is None:
                continue
            band(ax, *sv, label, c)
            th = _theory(d)
            pred = {"value": (th.get("uniform_attention") or {}).get("gap"),
                    "score": (th.get("attention") or {}).get("score_gap")}.get(key)
            theory_line(ax, pred, f"{label}: theory ({pred:.3g})" if pred is not None else "",
                        c, "--")
        ax.axhline(0, color="gray", lw=0.6)
        log_x(ax)
        ax.set_title(title, fontsize=9)
        ax.set_ylabel("mean same-topic - mean cross-topic entry", fontsize=8)
        ax.legend(fontsize=6, loc="best")
    fig.suptitle("Topic-block gaps (row-centred; theory dashed)", fontsize=10)
    return save(fig, out)


def plot_attention(runs, out: Path) -> Path | None:
    from topicdyn.plots.common import band, log_x, log_y, new_figure, save, series, theory_line

    fig = new_figure(7.5, 4.4)
    ax = fig.add_subplot()
    drawn = False
    for (d, label, _), c in zip(runs, COLORS * 10):
        rows = _probes(d)
        for key, what, ls in (("ratio_all", "same-topic / cross", "-"),
                              ("ratio", "other words only", ":")):
            sv = series(rows, f"attention/{key}")
            if sv is not None:
                band(ax, *sv, f"{label}: {what}", c, ls)
                drawn = True
        at = _theory(d).get("attention") or {}
        if at.get("pair_ratio"):
            theory_line(ax, at["pair_ratio"], f"{label}: theory exp(score gap) "
                                              f"({at['pair_ratio']:.3g})", c, "--")
    if not drawn:
        return None
    ax.axhline(1, color="black", lw=0.8, label="uniform attention (1)")
    log_y(ax)
    log_x(ax)
    ax.set_ylabel("attention ratio per key (log scale)", fontsize=8)
    ax.legend(fontsize=6, loc="best")
    fig.suptitle("Same-topic / cross-topic attention on the evaluation documents (correct "
                 "labels)", fontsize=10)
    return save(fig, out)


def t50s(d: Path) -> dict[str, np.ndarray]:
    """{matrix: t50 per seed} of a run (matrices that moved)."""
    from topicdyn.plots import normalised_changes, t50_per_seed
    return {k: t50_per_seed(s, v) for k, (s, v) in normalised_changes(_probes(d)).items()}


def plot_t50(runs, out: Path) -> Path | None:
    from topicdyn.plots.common import (COLORS as MC, MATRIX_LABEL, log_y, new_figure,
                                       read_predicted, save)

    data = [(label, t50s(d)) for d, label, _ in runs]
    preds = [(read_predicted(d).get("t50") or {}) for d, _, _ in runs]
    names = [k for k in ("WV", "E", "QK") if any(k in t for _, t in data)]
    if not names:
        return None
    fig = new_figure(max(5.5, 1.6 * len(runs) + 2), 4.4)
    ax = fig.add_subplot()
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        for j, (label, t) in enumerate(data):
            if name not in t:
                continue
            v = t[name]
            x = j - 0.4 + width * (i + 0.5)
            ax.errorbar([x], [v.mean()], yerr=[[v.mean() - v.min()], [v.max() - v.mean()]],
                        fmt="o", color=MC[name], capsize=3, ms=6, mec="black",
                        label=MATRIX_LABEL[name] if j == 0 else None)
            p = preds[j].get(name)
            if p is not None and np.isfinite(p) and p > 0:  # the reduced prediction
                ax.plot([x], [p], marker="_", ms=14, mew=2, color=MC[name],
                        label=f"{MATRIX_LABEL[name]}: reduced prediction"
                        if not any(preds[k].get(name) for k in range(j)) else None)
    ax.set_xticks(range(len(data)), [lab for lab, _ in data], fontsize=7, rotation=15)
    log_y(ax)
    ax.set_ylabel("t50 (training steps, log scale)", fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    fig.suptitle("t50: first checkpoint with half the final change (snaps to checkpoint "
                 "steps)\nmean over seeds, bars min..max", fontsize=9)
    return save(fig, out)


def claims_side_by_side(runs) -> tuple[list[str], list[list[str]]]:
    """(header, rows): one row per claim, one column per run: 'verdict (measured)' at the run's
    last checkpoint; one seed shows the value alone, several 'mean ± sd'."""
    from topicdyn.report import fmt, last_claims

    per_run, order = [], []
    for d, _, cfg in runs:
        try:
            step, claims = last_claims(d)
        except ConfigError:
            step, claims = None, []
        by = {c["claim"]: c for c in claims}
        per_run.append((step, by, cfg.train.n_seeds))
        order += [c["claim"] for c in claims if c["claim"] not in order]
    header = ["claim"] + [f"{label} (step {s})" if s is not None else f"{label} (no verdicts)"
                          for (_, label, _), (s, _, _) in zip(runs, per_run)]
    rows = []
    for claim in order:
        row = [claim]
        for _, by, n in per_run:
            c = by.get(claim)
            if c is None:
                row.append("-")
            elif c["measured"] is None:
                row.append(c["verdict"])
            else:
                m = fmt(c["measured"]) + (f" ± {fmt(c['sd'], 2)}" if n > 1 and c.get("sd")
                                          is not None else "")
                row.append(f"{c['verdict']} ({m})")
        rows.append(row)
    return header, rows


def text_table(header: list[str], rows: list[list[str]]) -> str:
    w = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    return "\n".join(" | ".join(c.ljust(w[i]) for i, c in enumerate(r)).rstrip()
                     for r in [header] + rows)


def compare(run_dirs: list[str | Path], out: str | Path,
            labels: list[str] | None = None) -> tuple[list[Path], str]:
    """Figures of the runs overlaid (module doc) into `out`, and comparison.md; returns (the
    files written, the claims table as text)."""
    dirs = expand(run_dirs)
    labels = labels or labels_for(dirs)
    if len(labels) != len(dirs):
        raise ConfigError(f"--labels: {len(labels)} labels for {len(dirs)} runs")
    runs = [(d, lab, require_run(d)) for d, lab in zip(dirs, labels)]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = [f for f in (plot_loss(runs, out / "loss.png"), plot_blocks(runs, out / "blocks.png"),
                         plot_attention(runs, out / "attention.png"),
                         plot_t50(runs, out / "t50.png")) if f is not None]
    header, rows = claims_side_by_side(runs)
    text = text_table(header, rows)
    from topicdyn.report import cell

    md = ["# Comparison", "", "| run | directory |", "|---|---|"]
    md += [f"| {cell(lab)} | `{d}` |" for d, lab, _ in runs]
    md += ["", "## Claims at each run's last checkpoint", "",
           "| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
    md += ["", "## Figures", ""] + [f"![{f.stem}]({f.name})" for f in files]
    (out / "comparison.md").write_text("\n".join(md) + "\n")
    return files + [out / "comparison.md"], text

