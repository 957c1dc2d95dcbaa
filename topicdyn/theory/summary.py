"""All predictions for one config in one JSON-able dict (used by `python -m topicdyn.theory`)."""
from __future__ import annotations

import time

from topicdyn.config import Config
from topicdyn.theory.attention import attention_optimum_A
from topicdyn.theory.bayes import bayes_loss, named_floors
from topicdyn.theory.common import is_disjoint_uniform
from topicdyn.theory.optima import symmetric_optimum_E, symmetric_optimum_V
from topicdyn.theory.population import population


def _num(x):
    return float(x) if x is not None else None


def predict(cfg: Config, *, n_docs: int = 20000, n_batches: int = 200, seed: int = 0,
            losses: tuple[str, ...] = ("ce", "squared")) -> dict:
    """{"floors": ..., "bayes": ..., "V": {loss: ...}, "E": {loss: ...}, "A": {loss: ...},
    "seconds": ...}; "floors" names both Bayes floors (bayes/query, bayes/visible; causal:
    bayes/prefix) with their split by query kind.

    One population sample (n_docs documents, or the exact enumeration of a tiny config) is
    shared by the V, E and A optima; the Bayes floor uses n_batches fresh batches.
    """
    t0 = time.time()
    b = bayes_loss(cfg, n_batches=n_batches, seed=seed + 12345)
    out = {"floors": named_floors(cfg, b),
           "bayes": {"loss": b.mean, "stderr": b.stderr, "baselines": b.baselines,
                     "assumptions": b.assumptions}}
    if not is_disjoint_uniform(cfg):
        out["seconds"] = time.time() - t0
        return out
    sample = population(cfg, n_docs=n_docs, seed=seed)
    for regime in ("V", "E", "A"):
        out[regime] = {}
        for loss in losses:
            if regime == "A":
                o = attention_optimum_A(cfg, loss=loss, sample=sample)
                out[regime][loss] = {
                    "params": o.params, "param_se": o.param_se, "limits": o.limits,
                    "invisible": o.invisible, "score_gap": o.score_gap,
                    "score_gap_se": o.score_gap_se, "pair_ratio": o.pair_ratio,
                    "attention_ratio": o.attention_ratio,
                    "attention_ratio_tied": o.attention_ratio_tied,
                    "self_tie_cost": o.self_tie_cost, "plateau": o.plateau,
                    "plateau_se": o.plateau_se, "uniform_loss": o.uniform_loss,
                    "assumptions": o.assumptions}
            else:
                f = symmetric_optimum_V if regime == "V" else symmetric_optimum_E
                o = f(cfg, loss=loss, sample=sample)
                out[regime][loss] = {
                    "params": o.params, "param_se": o.param_se, "gaps": o.gaps,
                    "gap_se": o.gap_se, "plateau": o.plateau, "plateau_se": o.plateau_se,
                    "gram": o.gram, "assumptions": o.assumptions}
    out["seconds"] = _num(time.time() - t0)
    return out
