"""The reduced-dynamics section of results/REPORT.md: predicted vs measured trajectories.

Rendered from finished runs (also under --reuse-only): each run's predicted.json (written by
its verdicts, topicdyn.predicted) against its probes, and the band claim's verdict. The run's
dynamics figures are redrawn with the predicted curves (`redraw_dynamics`: cheap, no
checkpoint is read).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from topicdyn.verdicts import mean_sd


def redraw_dynamics(run_dir: Path) -> None:
    """The run's loss, block-gap, attention and two-stage figures, with the prediction."""
    from topicdyn.jsonl import read_jsonl
    from topicdyn.plots import normalised_changes
    from topicdyn.plots.curves import (plot_attention_curves, plot_blocks, plot_loss,
                                       plot_two_stage)

    out = run_dir / "figures"
    plot_blocks(run_dir, out / "blocks.png")
    plot_attention_curves(run_dir, out / "attention.png")
    plot_loss(run_dir, out / "loss.png")
    if len(normalised_changes(read_jsonl(run_dir / "probes.jsonl"))) >= 2:
        plot_two_stage([run_dir], out / "two_stage.png")


def _t50_cell(measured, predicted) -> str:
    if not measured:
        return "-"
    m, s = mean_sd(measured)
    pred = "-" if predicted is None or not np.isfinite(predicted) else f"{predicted:.0f}"
    return f"{m:.0f} ± {s:.0f} / {pred}"


def _finding(verdicts: dict) -> str:
    """The band verdicts in words: where the reduction predicts the runs and where it fails."""
    held = [n for n, v in verdicts.items() if v == "holds"]
    refuted = [n for n, v in verdicts.items() if v == "refuted"]
    return (f"**Finding.** The runs stay within the band of the prediction for "
            f"{', '.join(held) or 'no experiment'} and leave it for "
            f"{', '.join(refuted) or 'none'} ({len(refuted)} of {len(verdicts)}). Where it "
            "fails, the prediction is not the dynamics of the run: the reduced model cannot "
            "follow what breaks the symmetry or adds noise: the random init's non-symmetric "
            "part, which drives the escape of attention from small init (A, F), and the "
            "finite-batch gradient noise, which the mean-field series models only "
            "approximately and only for Adam in V and E (the first checkpoints fail in E and "
            "V-squared). Its losses, t50s and lags there are the symmetric model's, reported "
            "beside the measured ones, not a fit.")


def section(data: dict) -> list[str]:
    """Markdown lines: one table row per experiment with a prediction."""
    rows, verdicts = [], {}
    for name, d in data.items():
        p = d.get("predicted") or {}
        if "step" not in p:
            continue
        la, t, pt = d["last"], d["t50"], p.get("t50") or {}
        band = [c for c in d["claims"] if c["claim"] == "trajectory within the reduced band"]
        first = band[0].get("first_outside") if band else None
        verdict = (band[0]["verdict"] if band else "-") + (
            f" (step {first})" if first is not None else "")
        verdicts[name] = band[0]["verdict"] if band else None
        pop = la.get("loss/pop_loss")
        meas = f"{mean_sd(pop)[0]:.4g}" if pop else "-"
        lag_m = (list(np.asarray(t["QK"]) - np.asarray(t["WV"]))
                 if "QK" in t and "WV" in t else None)
        pb = p.get("batch") or {}
        batch = f"{pb['loss'][-1]:.4g}" if pb else "-"
        rows.append(f"| {name} | {p['regime']} | {meas} | {p['loss'][-1]:.4g} ± "
                    f"{p['loss_se']:.1g} | {batch} | {_t50_cell(t.get('WV'), pt.get('WV'))} | "
                    f"{_t50_cell(t.get('E'), pt.get('E'))} | "
                    f"{_t50_cell(t.get('QK'), pt.get('QK'))} | "
                    f"{_t50_cell(lag_m, p.get('lag'))} | "
                    f"{verdict} | "
                    f"{p['seconds'] + pb.get('seconds', 0.0):.1f} |")
    if not rows:
        return []
    return ["## Reduced block-symmetric dynamics: predicted vs measured trajectories", "",
            "The population loss is invariant under permuting topics and words inside a "
            "topic, so training started on the block-symmetric subspace stays there; its few "
            "scalars, trained with the run's own optimiser on a fixed Monte Carlo sample, "
            "give a predicted trajectory (docs/REDUCTION.md). Started from the projection of "
            "the seed's initial parameters; the random init's non-symmetric part and "
            "finite-batch noise are what the band claim measures (the opt-in `symmetry` probe "
            "follows the non-symmetric part). Cells: measured (mean ± sd over seeds) / "
            "predicted (population gradients); t50 in steps; band verdict (against the "
            "finite-batch series where there is one) with the first checkpoint outside it. "
            "Finite batch: Adam on the gradient moments of the run's batch size (mean-field "
            "approximation, V and E), the lag gradient noise causes through Adam's second "
            "moment.", "",
            _finding(verdicts), "",
            "| experiment | regime | population loss | predicted loss (± s.e.) | predicted, "
            "finite batch | t50 W^V | t50 E | t50 W^Q W^K^T | lag | band claim | prediction "
            "cost (s) |", "|---|---|---|---|---|---|---|---|---|---|---|"] + rows + [""]
