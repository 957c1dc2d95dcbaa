"""The band claim of the reduced dynamics: the empirical trajectory stays within a stated band
of the predicted one (topicdyn.predicted, theory section "reduced", docs/REDUCTION.md).

At every probed checkpoint up to the judged one, for the population loss and the regime's gap
(V, F: value map, E: embedding Gram, A: score map):

    |mean over seeds of the measured - predicted| <= BAND_Z sqrt(sd^2 + se_p^2 + se_m^2)
                                                     + REL |predicted_t - predicted_0|

sd: the sample sd over seeds at that checkpoint, i.e. the measured spread of one seed's
trajectory, which holds both sources of deviation from the symmetric population trajectory
(finite-batch gradient noise: every seed has its own data stream; the symmetry-breaking part of
the random init); se_p, se_m: the Monte Carlo errors of the predicted and the measured
population loss (loss only). The prediction is the finite-batch series where there is one
(Adam in V and E: the lag that gradient noise in Adam's second moment causes, a mean-field
approximation, theory/reduced/noise.py), else the population-gradient one. REL is a stated
tolerance, not measured per run, for that approximation's error and, where there is no
finite-batch series, for the unmodelled lag (a lag, not a spread: the seed sd misses it; the
population series lags 2-4% of the change at batch 256, ~25% at batch 40 in V). "holds" if
every checkpoint so far is inside, "refuted" at the first one outside (kept refuted
afterwards), "not decidable here" with fewer than 2 seeds (no measured spread: the band cannot
be stated).
"""
from __future__ import annotations

import numpy as np

from topicdyn.claims.core import (HOLDS, NOT_DECIDABLE, REFUTED, ROW_EXTRAS, Claim, Judging,
                                  mean_sd, register)

BAND_Z = 3.0
REL = 0.1  # of the predicted change since step 0: finite-batch effects (module doc)
GAP_STAT = {"V": ("value_gap", "blocks/value_gap"), "E": ("gram_gap", "blocks/gram_gap"),
            "A": ("score_gap", "blocks/score_gap"), "F": ("value_gap", "blocks/value_gap")}
PAPER = ("(this project) the empirical trajectory stays within the seed band of the reduced "
         "block-symmetric prediction (loss and block gap)")


def band_check(pred: dict, history: list[dict]) -> dict:
    """Compare the measured rows (probes rows, per-seed lists) with the predicted series.
    Returns {"inside": bool | None, "worst": (z, step, stat), "first_outside": step | None,
    "checked": n}; z = max(|mean - predicted| - REL |change|, 0) / sqrt(sd^2 + se^2) (inside:
    z <= BAND_Z)."""
    at = {s: i for i, s in enumerate(pred["step"])}
    gname, gkey = GAP_STAT[pred["regime"]]
    worst, first, n, undecided = (0.0, None, None), None, 0, False
    for row in history:
        i = at.get(row["step"])
        if i is None:
            continue
        for name, key in (("loss", "loss/pop_loss"), (gname, gkey)):
            vals = row.get(key)
            if vals is None or name not in pred:
                continue
            if len(vals) < 2:
                undecided = True
                continue
            m, sd = mean_sd(vals)
            se2 = 0.0
            if name == "loss":
                se2 = pred.get("loss_se", 0.0) ** 2 + float(
                    np.mean(row.get("loss/pop_loss_se") or [0.0])) ** 2
            scale = np.sqrt(sd * sd + se2)
            dev = max(abs(m - pred[name][i]) - REL * abs(pred[name][i] - pred[name][0]), 0.0)
            z = dev / scale if scale > 0 else (0.0 if dev == 0 else np.inf)
            n += 1
            if z > worst[0] or worst[1] is None:
                worst = (float(z), row["step"], name)
            if z > BAND_Z and first is None:
                first = row["step"]
    inside = None if undecided or n == 0 else first is None
    return {"inside": inside, "worst": worst, "first_outside": first, "checked": n}


def reference(pred: dict) -> tuple[dict, str]:
    """(series, what they are): the finite-batch mean-field series where predicted (Adam in V
    and E), else the population-gradient series."""
    if pred.get("batch"):
        return {**pred["batch"], "regime": pred["regime"], "loss_se": pred.get("loss_se", 0.0)}, \
            pred["batch"]["label"]
    return pred, "population gradients"


def judge_trajectory(j: Judging) -> dict:
    pred, what = reference(j.theory["reduced"])
    res = band_check(pred, j.history)
    step = j.row["step"]
    i = pred["step"].index(step) if step in pred["step"] else None
    m, sd = mean_sd(j.get("loss/pop_loss"))
    z, zs, zn = res["worst"]
    how = (f"band: |mean - predicted| <= {BAND_Z:g} sqrt(seed sd^2 + s.e.^2) + {REL:g} "
           f"|predicted change| (finite-batch effects) at every "
           f"checkpoint so far ({res['checked']} comparisons of loss/pop_loss and "
           f"{GAP_STAT[pred['regime']][1]}); seed sd = measured finite-batch noise + "
           f"symmetry-breaking init; worst z = {z:.2f} ({zn}, step {zs})")
    if res["inside"] is None:
        verdict = NOT_DECIDABLE
        how = "fewer than 2 seeds: no measured seed band; " + how
    else:
        verdict = HOLDS if res["inside"] else REFUTED
        if not res["inside"]:
            how = f"first outside at step {res['first_outside']}; " + how
    return {"claim": "trajectory within the reduced band", "paper": PAPER,
            "predicted": pred["loss"][i] if i is not None else None, "measured": m, "sd": sd,
            "tolerance": BAND_Z, "verdict": verdict, "how": how,
            **{k: None for k in ROW_EXTRAS}, "predicted_se": pred.get("loss_se"),
            "basis": f"population loss and block gap vs the reduced prediction ({what})",
            "first_outside": res["first_outside"], "worst_z": z}


NAME = "trajectory within the reduced band"
register(Claim(NAME, PAPER, frozenset(), ("reduced",), ("loss/pop_loss",), judge_trajectory))
