"""The predicted series of a reduced trajectory, named like the probes' statistics.

At each requested step t (the parameters after t updates):
    loss                 population loss on the reduced model's sample (probe: loss/pop_loss)
    value_gap            same - cross of the value map E W^V W_dec (probe: blocks/value_gap)
    gram_gap             same - cross of the row-centred embedding Gram (blocks/gram_gap)
    score_gap            same - cross of the score map E W^Q W^K^T E^T / sqrt(d) (blocks/...)
    attention_ratio      exp(score_gap): same-topic / cross-topic attention to one key, exact
                         *per query* on the subspace; the probe (attention/ratio) pools (query,
                         key) pairs over queries with different normalisers: an approximation
    delta_<name>         ||W_t - W_0||_F of the symmetric part (dynamics/delta_<name>)
and the t50 of every delta (first step at which it reaches half its final value) with the lag
t50(QK) - t50(WV) where both exist. Gaps are invariant to the row centring of the probes.
"""
from __future__ import annotations

import numpy as np

from topicdyn.claims.core import t50
from topicdyn.theory.reduced.dynamics import ReducedTrajectory
from topicdyn.theory.reduced.model import ReducedModel


def _gap(M: np.ndarray, classes: np.ndarray) -> float:
    """same - cross of the content block (classes 1 and 2 of the block basis)."""
    return float(M[classes == 1].mean() - M[classes == 2].mean())


def predicted_series(rm: ReducedModel, tr: ReducedTrajectory, steps) -> dict:
    """{series name: list over `steps`} (steps: ints <= the trajectory's length) plus "t50"
    ({delta name: step}) and "lag" (or None)."""
    steps = [int(s) for s in steps]
    cls = rm.basis.classes
    V = int((cls[0] <= 2).sum())  # content columns of a content row
    out: dict = {"step": steps, "loss": [float(tr.loss[s]) for s in steps]}
    mats = []
    for s in steps:
        m = rm.matrices({n: tr.theta[n][s] for n in rm.trained})
        mats.append({k: np.asarray(v, np.float64) for k, v in m.items()})
    out["value_gap"] = [_gap(m["E"] @ m["WV"] @ m["W_dec"], cls) for m in mats]
    if "E" in rm.trained:
        def gram(m):
            Ec = m["E"] - m["E"][:, :V].mean(1, keepdims=True)
            return Ec @ Ec.T
        out["gram_gap"] = [_gap(gram(m), cls) for m in mats]
    if "WQ" in rm.trained:
        d = cls.shape[0]
        sg = [_gap(m["E"] @ m["WQ"] @ m["WK"].T @ m["E"].T / np.sqrt(d), cls) for m in mats]
        out["score_gap"] = sg
        out["attention_ratio"] = [float(np.exp(g)) for g in sg]
    first = {k: np.asarray(v, np.float64)
             for k, v in rm.matrices({n: tr.theta[n][0] for n in rm.trained}).items()}
    names = list(rm.trained) + (["QK"] if "WQ" in rm.trained else [])
    deltas = {}
    for n in names:
        def mat(m, n=n):
            return m["WQ"] @ m["WK"].T if n == "QK" else m[n]
        deltas[n] = [float(np.linalg.norm(mat(m) - mat(first))) for m in mats]
        out[f"delta_{n}"] = deltas[n]
    out["t50"] = {n: t50(np.asarray(steps), d) for n, d in deltas.items()}
    out["lag"] = (out["t50"]["QK"] - out["t50"]["WV"]
                  if {"QK", "WV"} <= set(out["t50"]) else None)
    return out
