"""P1's claims as verdicts per checkpoint: pass / fail / not yet converged / not decidable here
/ not applicable (rules: topicdyn.claims).

`run_predictions(cfg)` computes the theory that applies to the run's exact config (written to
theory.json), asked only for what the variant's traits allow: the Bayes floors (masked-token:
`bayes/query` given the visible words and the token shown at the query, `bayes/visible` given
the visible words only, each split by query kind; next-token: `bayes/prefix`) with the one the
model class can reach named, the uniform-attention optimum (one-layer position-free MLM models
with a linear readout: regimes V and E, and stage 1 of F) and, for the paper's stage-2 model
(frozen topic-block W^V), the regime-A optimum with the loss profile along its score gap. Every
value is a population quantity with its Monte Carlo s.e.; the optima's losses on the run's own
evaluation documents (`plateau_eval`, `uniform_eval`) are kept as a labelled paired column.

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
                                     QUERY_BLIND, TRAINED_EMBEDDING, TRAINED_VALUE)


def _applies_linear(cfg: Config, traits) -> bool:
    """A trainable linear map of the key counts under uniform attention: regimes E, V and
    F's stage 1 (E W^V W_dec can be any vocab x vocab map when d >= n_vocab)."""
    return {BAG_OF_WORDS, LINEAR_READOUT} <= traits and bool(
        traits & {TRAINED_EMBEDDING, TRAINED_VALUE}) and cfg.d_model >= cfg.data.n_vocab


THEORY_DOCS = 20000  # Monte Carlo documents of the optima: s.e. ~1e-3 nats on their losses
THEORY_BATCHES = 500  # batches of the floors: s.e. ~3e-3 nats
FLOOR_NAMES = {"query": "bayes/query", "visible": "bayes/visible", "prefix": "bayes/prefix"}


def reachable_floor(cfg: Config, traits) -> tuple[str, str]:
    """(floor name, why): the Bayes floor a model of this class can reach. The lower floor
    bayes/query is the default: it bounds every model; bayes/visible only where the variant
    promises that the output at a selected position ignores the token shown there."""
    if CAUSAL in traits:
        return FLOOR_NAMES["prefix"], "next-token objective: the posterior given the prefix"
    if QUERY_BLIND in traits:
        return FLOOR_NAMES["visible"], ("the output at a selected position ignores the token "
                                        "shown there: uniform attention, the position no key")
    return FLOOR_NAMES["query"], "the model may read the token shown at the query position"


@memoized(("data", "mask", "model", "train"))  # the optimiser never enters the theory
def run_predictions(cfg: Config, n_docs: int = THEORY_DOCS, n_batches: int = THEORY_BATCHES,
                    seed: int = 0) -> dict:
    """JSON-able theory predictions for this config (see module doc). Population values carry
    their Monte Carlo s.e. (n_docs documents for the optima, n_batches batches for the floors:
    errors of a few 1e-3 nats at the defaults); `*_eval` values are on the run's fixed
    evaluation documents and say so. ~1 min on a CPU the first time, shared by every config
    with the same content (theory.cache)."""
    import jax

    from topicdyn.probes import eval_batch
    from topicdyn.theory import (attention_loss, attention_optimum_A, bayes_loss, linear_loss,
                                 population, symmetric_optimum_V)
    from topicdyn.theory.bayes import named_floors
    from topicdyn.theory.common import is_disjoint_uniform
    from topicdyn.theory.population import from_batch

    loss = cfg.model.loss
    traits = traits_for(cfg)
    out: dict = {"loss": loss, "traits": sorted(traits),
                 "sample_sizes": {"optima_docs": n_docs, "floor_batches": n_batches,
                                  "floor_batch_docs": cfg.data.batch_size,
                                  "eval_docs": cfg.train.n_eval}}
    if cfg.data.source == "corpus":
        out["note"] = ("real text (data.source=corpus): no generator, so no Bayes floor or "
                       "optima; its LDA-fitted twin (topicdyn train --twin) has them")
        return out
    if loss == "ce" and traits & {MLM, CAUSAL}:
        try:
            b = bayes_loss(cfg, n_batches=n_batches, seed=seed + 12345)
        except NotImplementedError as e:
            out["note"] = f"no Bayes floor: {e}"
            return out
        name, why = reachable_floor(cfg, traits)
        out["floors"] = named_floors(cfg, b)
        out["reachable_floor"] = {"name": name, "why": why}
        out["floor_assumptions"] = _jsonable(b.assumptions)
    if MLM not in traits:
        out["note"] = ("next-token objective: the next-token Bayes floor only (the symmetric "
                       "optima are masked-token theory)" if CAUSAL in traits else
                       "no theory for this objective (Bayes floor, optima)")
        return out
    if not is_disjoint_uniform(cfg):
        out["note"] = "block-symmetric optima need disjoint uniform topics; only the Bayes floor"
        return out
    sample = population(cfg, n_docs=n_docs, seed=seed)
    if loss == "ce":
        out["class_ceiling"] = class_ceiling(cfg, sample)
    if not (_applies_linear(cfg, traits) or PAPER_STAGE2 in traits):
        out["note"] = "the symmetric optima assume a one-layer position-free model with a " \
                      "linear readout; only the Bayes floors and the class ceiling apply"
        return out
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
            "uniform_loss": a.uniform_loss, "uniform_loss_se": a.uniform_loss_se,
            "uniform_eval": float(attention_loss(np.zeros_like(a.score_matrix), eval_sample,
                                                 cfg, loss)[0]),
            "gap_profile": gap_profile(cfg, a, sample, loss),
            "params": _jsonable(a.params),
            "assumptions": _jsonable(a.assumptions)}
    return out


def class_ceiling(cfg: Config, sample) -> dict:
    """L_ceil^E (EMBEDDING_SPACE.md §2): the population loss of the best one-layer
    embedding-only model (uniform attention over the keys, logits linear in the key
    frequencies, d >= n_vocab), whatever the run's own variant: the convex fit of theory.optima
    (regime V's optimum, the same function class). No amount of training an embedding-only
    model beats it; an attention model below it is not redundant (claim S1). The kind of a
    query is drawn independently of its document, and the class ignores the shown token, so
    its loss is the same for every query kind."""
    from topicdyn.theory import symmetric_optimum_V

    o = symmetric_optimum_V(cfg, loss="ce", sample=sample)
    return {"name": "embedding-only (uniform attention, linear readout)",
            "loss": o.plateau, "stderr": o.plateau_se,
            "params": {"a": o.params["a"], "b": o.params["b"]},
            "what": "population loss of the best embedding-only model (block-symmetric convex "
                    "fit of the key frequencies; the symmetric optimum is a global one)"}


FLAT_NATS = 1e-3  # a loss change below this along a direction: the direction is not identified


def gap_profile(cfg: Config, a, sample, loss: str) -> dict:
    """How much the population loss rises when the score gap (s_same) alone moves away from
    its optimum: to gap/2 and 2 gap (gap -/+ 1 when |gap| < 0.5). `flat` when either side
    rises by less than FLAT_NATS: a factor-2 change of the gap that the loss barely sees, so the
    loss does not pin the gap's value down (training may stop or drift anywhere along it)."""
    from topicdyn.theory.attention import attention_loss, score_matrix

    g = a.params["s_same"]
    lo, hi = (g / 2, 2 * g) if abs(g) >= 0.5 else (g - 1.0, g + 1.0)
    rise = {}
    for name, v in (("low", lo), ("high", hi)):
        S = score_matrix(cfg, {**a.params, "s_same": v})
        rise[name] = float(attention_loss(S, sample, cfg, loss)[0] - a.plateau)
    return {"gap_low": float(lo), "gap_high": float(hi), "rise_low": rise["low"],
            "rise_high": rise["high"], "flat": bool(min(rise.values()) < FLAT_NATS),
            "flat_nats": FLAT_NATS}


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


def with_reduced(theory: dict, run_dir: Path, cfg: Config) -> dict:
    """theory plus the run's predicted trajectory (topicdyn.predicted) as section "reduced"
    where the reduction applies (predicted.json, computed once per run directory)."""
    from topicdyn.predicted import for_run

    pred = for_run(run_dir, cfg) if theory.get("loss") is not None else {}
    return {**theory, "reduced": pred} if "step" in pred else theory


def judge_run(run_dir: str | Path, write: bool = True) -> list[dict]:
    """Verdicts for every probed checkpoint of a run (verdicts.jsonl); returns the last."""
    from topicdyn.config import load_config
    from topicdyn.probes.runner import read_probes

    run_dir = Path(run_dir)
    cfg = load_config(run_dir)
    theory = json.loads((run_dir / "theory.json").read_text())
    theory = with_reduced(theory, run_dir, cfg)
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


def _pm(x, se) -> str:
    if x is None:
        return "-"
    if not isinstance(x, (int, float)):
        return str(x)
    return f"{x:.4g}" + (f" ± {se:.1g}" if se else "")


def format_table(claims: list[dict], n_seeds: int = 2) -> str:
    """claim | predicted (± MC s.e.) | measured (mean ± sd over seeds; s.e.) | basis | verdict,
    as aligned text; with one seed the measured value alone (there is no spread)."""
    rows = [("claim", "predicted ± se", "measured ± sd (se)" if n_seeds > 1 else
             "measured (se)", "basis", "verdict")]
    for c in claims:
        if c["verdict"] == NOT_APPLICABLE:
            rows.append((c["claim"], "-", "-", "-", f"{NOT_APPLICABLE}: {c['how']}"))
            continue
        meas = f"{c['measured']:.4g}" + (f" ± {c['sd']:.2g}" if n_seeds > 1 else "")
        if c.get("measured_se"):
            meas += f" ({c['measured_se']:.1g})"
        basis = c.get("basis") or "-"
        if c.get("floor"):
            basis += f", floor {c['floor']}"
        v = c["verdict"] + (f" ({c['judged_on']})" if c.get("judged_on") else "")
        rows.append((c["claim"], _pm(c["predicted"], c.get("predicted_se")), meas, basis, v))
    w = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join(" | ".join(r[i].ljust(w[i]) for i in range(5)).rstrip() for r in rows)
