"""P1's claims as verdicts per checkpoint: pass / fail / not yet converged / not applicable.

`run_predictions(cfg)` computes the theory that applies to the run's exact config (written to
theory.json), asked only for what the variant's traits allow: the Bayes floor (masked-token or
next-token objective), the uniform-attention optimum (one-layer position-free MLM models with a
linear readout: regimes V and E, and stage 1 of F) and, for the paper's stage-2 model (frozen topic-block
W^V), the regime-A optimum. Losses are also evaluated on the run's own evaluation documents (the
ones the probes use), so measured-vs-predicted loss is a paired comparison without
document-sampling noise.

`judge(row, theory, cfg, prev, history)` turns one probes.jsonl row into one row per registered
claim (topicdyn.claims), "not applicable" with the reason where the claim does not apply.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from topicdyn.claims import NOT_APPLICABLE, Judging, judge_all, mean_sd, t50, traits_for  # noqa: F401
from topicdyn.config import Config
from topicdyn.theory.cache import memoized
from topicdyn.models.variant import (BAG_OF_WORDS, CAUSAL, LINEAR_READOUT, MLM, PAPER_STAGE2,
                                     TRAINED_EMBEDDING, TRAINED_VALUE)


def _applies_linear(cfg: Config, traits) -> bool:
    """A trainable linear map of the key counts under uniform attention: regimes E, V and
    F's stage 1 (E W^V W_dec can be any vocab x vocab map when d >= n_vocab)."""
    return {BAG_OF_WORDS, LINEAR_READOUT} <= traits and bool(
        traits & {TRAINED_EMBEDDING, TRAINED_VALUE}) and cfg.d_model >= cfg.data.n_vocab


@memoized(("data", "mask", "model", "train"))  # the optimiser never enters the theory
def run_predictions(cfg: Config, n_docs: int = 4000, n_batches: int = 50, seed: int = 0) -> dict:
    """JSON-able theory predictions for this config (see module doc); ~10-30 s on a CPU the
    first time, shared by every config with the same content (theory.cache)."""
    import jax

    from topicdyn.probes import eval_batch
    from topicdyn.theory import (attention_loss, attention_optimum_A, bayes_loss, linear_loss,
                                 population, symmetric_optimum_V)
    from topicdyn.theory.common import is_disjoint_uniform
    from topicdyn.theory.population import from_batch

    loss = cfg.model.loss
    traits = traits_for(cfg)
    out: dict = {"loss": loss, "n_docs": n_docs, "traits": sorted(traits)}
    if loss == "ce" and traits & {MLM, CAUSAL}:
        b = bayes_loss(cfg, n_batches=n_batches, seed=seed + 12345)
        out["bayes"] = {"loss": b.mean, "stderr": b.stderr, "assumptions": _jsonable(b.assumptions)}
    if MLM not in traits:
        out["note"] = ("next-token objective: the next-token Bayes floor only (the symmetric "
                       "optima are masked-token theory)" if CAUSAL in traits else
                       "no theory for this objective (Bayes floor, optima)")
        return out
    if not is_disjoint_uniform(cfg):
        out["note"] = "block-symmetric optima need disjoint uniform topics; only the Bayes floor"
        return out
    if not (_applies_linear(cfg, traits) or PAPER_STAGE2 in traits):
        out["note"] = "the symmetric optima assume a one-layer position-free model with a " \
                      "linear readout; only the Bayes floor applies"
        return out
    sample = population(cfg, n_docs=n_docs, seed=seed)
    eval_sample = from_batch(jax.device_get(eval_batch(cfg)), cfg.data.n_vocab)
    if _applies_linear(cfg, traits):
        o = symmetric_optimum_V(cfg, loss=loss, sample=sample)
        out["uniform_attention"] = {
            "gap": o.gaps["same_minus_cross"], "gap_se": o.gap_se["same_minus_cross"],
            "diag_minus_same": o.gaps["diag_minus_same"],
            "diag_minus_same_se": o.gap_se["diag_minus_same"],
            "plateau": o.plateau, "plateau_se": o.plateau_se,
            "plateau_eval": float(linear_loss(o.matrix, eval_sample, cfg, loss)[0]),
            "assumptions": _jsonable(o.assumptions)}
    if PAPER_STAGE2 in traits:
        a = attention_optimum_A(cfg, loss=loss, sample=sample)
        out["attention"] = {
            "score_gap": a.score_gap, "score_gap_se": a.score_gap_se,
            "pair_ratio": a.pair_ratio, "plateau": a.plateau, "plateau_se": a.plateau_se,
            "plateau_eval": float(attention_loss(a.score_matrix, eval_sample, cfg, loss)[0]),
            "uniform_loss": a.uniform_loss,
            "uniform_eval": float(attention_loss(np.zeros_like(a.score_matrix), eval_sample,
                                                 cfg, loss)[0]),
            "params": _jsonable(a.params),
            "assumptions": _jsonable(a.assumptions)}
    return out


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    return x


def judge(row: dict, theory: dict, cfg: Config, prev: dict | None = None,
          history: list[dict] | None = None) -> list[dict]:
    """One row per registered claim for one probes row (values are per-seed lists); history:
    all rows up to it."""
    return judge_all(Judging(row, prev, history or [row], theory, cfg, traits_for(cfg)))


def judge_run(run_dir: str | Path, write: bool = True) -> list[dict]:
    """Verdicts for every probed checkpoint of a run (verdicts.jsonl); returns the last."""
    from topicdyn.config import load_config
    from topicdyn.probes.runner import read_probes

    run_dir = Path(run_dir)
    cfg = load_config(run_dir)
    theory = json.loads((run_dir / "theory.json").read_text())
    rows = read_probes(run_dir)
    from topicdyn.probes import not_applicable

    skipped = not_applicable(cfg)
    lines, last = [], []
    for i, row in enumerate(rows):
        last = judge(row, theory, cfg, rows[i - 1] if i else None, rows[: i + 1])
        line = {"step": row["step"], "claims": last}
        if skipped:
            line["probes_not_applicable"] = skipped
        lines.append(json.dumps(line))
    if write:
        (run_dir / "verdicts.jsonl").write_text("".join(x + "\n" for x in lines))
    return last


def format_table(claims: list[dict]) -> str:
    """claim | predicted | measured (mean ± sd over seeds) | verdict, as aligned text."""
    def fmt(x):
        if x is None:
            return "-"
        return f"{x:.4g}" if isinstance(x, (int, float)) else str(x)
    rows = [("claim", "predicted", "measured (mean ± sd)", "verdict")]
    for c in claims:
        if c["verdict"] == NOT_APPLICABLE:
            rows.append((c["claim"], "-", "-", f"{NOT_APPLICABLE}: {c['how']}"))
            continue
        rows.append((c["claim"], fmt(c["predicted"]), f"{c['measured']:.4g} ± {c['sd']:.2g}",
                     c["verdict"]))
    w = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join(" | ".join(r[i].ljust(w[i]) for i in range(4)) for r in rows)
