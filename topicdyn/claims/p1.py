"""The claims of Li, Li & Risteski (2023), judged against the theory for the run's config.

What each comparison reads:
- losses: the model's population estimate `loss/pop_loss` ± `pop_loss_se` (train.n_pop_eval
  fresh documents) against the theory's population value ± its Monte Carlo s.e.; the tolerance
  combines both errors with a physical tolerance (core.combined_tolerance). The paired values on
  the fixed evaluation set (`eval_loss` vs the optimum's `plateau_eval`) are kept in the row as a
  second, labelled column. Without a population estimate (train.n_pop_eval=0) the eval-set pair
  is judged, and the row's basis says so;
- floors: the Bayes floor the model class can reach (theory.json `reachable_floor`), by name;
- a gap along which the loss is flat (regime A's score gap, theory `gap_profile`): sign and order
  of magnitude only, with its drift over training in the row.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from topicdyn.claims.core import (BAYES_FLOOR, CE, REPORTED, Claim, Judging, combined_tolerance,
                                  mean_sd, register, t50, undecidable, verdict)
from topicdyn.models.variant import (BAG_OF_WORDS, MLM, NO_POSITIONS, ONE_LAYER, PAPER_STAGE2,
                                     TRAINED_ATTENTION, TRAINED_EMBEDDING, TRAINED_VALUE,
                                     UNIFORM_ATTENTION)

UNIFORM_1L = frozenset({UNIFORM_ATTENTION, ONE_LAYER, NO_POSITIONS, MLM})
ATTN_1L = frozenset({TRAINED_ATTENTION, ONE_LAYER, MLM})
ORDER = 0.5  # flat gaps: |log10(measured / predicted)| <= ORDER (within a factor ~3.2)


class Measured(NamedTuple):
    values: list  # per-seed losses
    se: float  # their s.e. (0 on the eval set: compared there as a pair)
    basis: str  # what the values are, in words
    eval_values: list  # per-seed losses on the fixed evaluation set
    population: bool  # values are population estimates (else: the eval set)
    key: str  # the probe stat the values come from


def measured_loss(j: Judging) -> Measured:
    """The measured loss a loss claim compares: the population estimate when the run has one,
    else the eval set. Seeds share the population documents, so their errors are correlated:
    the mean's s.e. is taken as the mean of the seeds' (no 1/sqrt(seeds))."""
    ev = j.get("loss/eval_loss")
    pop = j.get("loss/pop_loss")
    if pop is not None and j.get("loss/pop_loss_se") is not None:
        return Measured(pop, float(np.mean(j.get("loss/pop_loss_se"))),
                        f"population ({j.cfg.train.n_pop_eval} documents)", ev, True,
                        "loss/pop_loss")
    return Measured(ev, 0.0, f"eval set ({j.cfg.train.n_eval} documents)", ev, False,
                    "loss/eval_loss")


def _physical_loss_tol(j: Judging, value: float) -> float:
    return 0.02 if j.cfg.model.loss == "ce" else 0.02 * value


def _null_loss(j: Judging) -> float:
    """The loss of predicting nothing: uniform over the content words (CE) or all-zero logits
    (squared). A loss claim whose tolerance reaches it cannot fail."""
    return math.log(j.cfg.data.V) if j.cfg.model.loss == "ce" else 1.0


def _loss_claim(j: Judging, sec: dict, name: str, paper: str, what: str) -> dict:
    m = measured_loss(j)
    v, se, basis, ev, population = m.values, m.se, m.basis, m.eval_values, m.population
    pred = sec["plateau"] if population else sec["plateau_eval"]
    pred_se = sec["plateau_se"] if population else 0.0
    tol = combined_tolerance(_physical_loss_tol(j, pred), pred_se, se)
    how = (f"{basis} loss vs {what}, tolerance sqrt({_physical_loss_tol(j, pred):.3g}^2 + "
           f"9 (se_pred^2 + se_meas^2))" if population else
           f"{basis} loss vs {what} on the same documents (no population estimate: "
           "train.n_pop_eval=0)")
    row = verdict(name, paper, pred, v, tol, lambda x: abs(x.mean() - pred) <= tol,
                  j.before(m.key), how, predicted_se=pred_se, measured_se=se,
                  basis=basis, predicted_eval=sec["plateau_eval"],
                  measured_eval=mean_sd(ev)[0])
    if tol >= abs(pred - _null_loss(j)):
        return undecidable(row, "the tolerance reaches the loss of predicting nothing")
    return row


def _below(j: Judging, name: str, paper: str, thr: float, thr_se: float, thr_eval: float,
           optimum: float | None, what: str) -> dict:
    """Every seed's loss below a threshold loss by 2 combined s.e.; not decidable when the
    predicted optimum itself is within 3 s.e. of the threshold."""
    m = measured_loss(j)
    v, se, basis, ev, population = m.values, m.se, m.basis, m.eval_values, m.population
    t = thr if population else thr_eval
    comb = math.hypot(thr_se, se) if population else 0.0
    row = verdict(name, paper, t, v, 0.0, lambda x: x.max() < t - 2 * comb, j.before(m.key),
                  f"every seed's {basis} loss below {what} by 2 combined s.e. "
                  f"({2 * comb:.2g})", threshold=t, predicted_se=thr_se if population else 0.0,
                  measured_se=se, basis=basis, predicted_eval=thr_eval,
                  measured_eval=mean_sd(ev)[0])
    if optimum is not None and t - optimum < 3 * comb:
        return undecidable(row, f"the optimum ({optimum:.4g}) is within 3 s.e. of the "
                                "threshold")
    return row


# ---- the claims -----------------------------------------------------------------------------
def _block_structure(j: Judging) -> dict:
    ua = j.theory["uniform_attention"]
    tol = combined_tolerance(0.1 * abs(ua["gap"]), ua["gap_se"])
    what = "embedding E (= value map)" if TRAINED_EMBEDDING in j.traits and \
        TRAINED_VALUE not in j.traits else "value map E W^V W_dec"
    row = verdict("block structure (same - cross)", f"{what} has topic-block structure",
                  ua["gap"], j.get("blocks/value_gap"), tol,
                  lambda v: abs(v.mean() - ua["gap"]) <= tol, j.before("blocks/value_gap"),
                  "row-centred content block of the trained parameters; tolerance "
                  "sqrt((10%)^2 + 9 se^2)", predicted_se=ua["gap_se"], measured_se=0.0,
                  basis="parameters")
    if tol >= abs(ua["gap"]):
        return undecidable(row, "the tolerance admits no block structure at all")
    return row


def _uniform_optimum_loss(j: Judging) -> dict:
    return _loss_claim(j, j.theory["uniform_attention"], "loss at the uniform-attention optimum",
                       "stage-wise optimum is block-structured",
                       "the symmetric optimum's population loss")


def _gram(j: Judging) -> dict:
    return verdict("embedding Gram: same-topic > cross-topic", "same-topic words have larger "
                   "embedding inner products", None, j.get("blocks/gram_gap"), 0.0,
                   lambda v: v.min() > 0, None, "row-centred E E^T, every seed",
                   basis="parameters")


def drift(j: Judging, key: str) -> list[tuple[int, float]]:
    """(step, mean over seeds) of a statistic at about 10%, 50% and 100% of the steps so far."""
    hist = [r for r in j.history if r.get(key) is not None]
    if not hist:
        return []
    last = hist[-1]["step"]
    picks = []
    for frac in (0.1, 0.5, 1.0):
        r = min(hist, key=lambda r: abs(r["step"] - frac * last))
        if r not in picks:
            picks.append(r)
    return [(int(r["step"]), mean_sd(r[key])[0]) for r in picks]


def _score_gap(j: Judging) -> dict:
    at = j.theory["attention"]
    g, gse = at["score_gap"], at["score_gap_se"]
    prof = at.get("gap_profile") or {}
    vals = np.asarray(j.get("blocks/score_gap"), float)
    path = drift(j, "blocks/score_gap")
    shown = ", ".join(f"{m:.3g} at step {s}" for s, m in path)
    if not prof.get("flat"):
        tol = combined_tolerance(0.15 * abs(g), gse) if math.isfinite(gse) else math.inf
        row = verdict("score gap (same - cross topic)", "attention is topic-biased", g, vals,
                      tol, lambda v: abs(v.mean() - g) <= tol, j.before("blocks/score_gap"),
                      f"row-centred W^Q W^K^T / sqrt(d); tolerance sqrt((15%)^2 + 9 se^2); "
                      f"drift: {shown}", predicted_se=gse, measured_se=0.0, basis="parameters",
                      drift=path)
        if tol >= max(abs(g), 1.0):
            return undecidable(row, f"the tolerance ({tol:.2g}) admits every plausible gap")
        return row
    rise = min(prof["rise_low"], prof["rise_high"])
    same_sign = bool(np.all(np.sign(vals) == np.sign(g)))
    m = float(vals.mean())
    order = same_sign and m * g > 0 and abs(math.log10(m / g)) <= ORDER
    row = verdict("score gap (same - cross topic)", "attention is topic-biased", g, vals, None,
                  lambda v: order, None,
                  f"the loss is flat along the gap (halving or doubling it costs "
                  f"{rise:.1e} nats): only its sign and order of magnitude are identified, "
                  f"judged as the same sign in every seed and within a factor "
                  f"{10 ** ORDER:.2g} of the optimum; the loss at the optimum is the claim "
                  f"'loss at the attention optimum'; drift over training: {shown}",
                  predicted_se=gse, measured_se=0.0, basis="parameters", drift=path,
                  judged_on="sign and order of magnitude: the loss is flat along the gap")
    if not math.isfinite(gse) or abs(g) < max(3 * gse, 0.5):
        return undecidable(row, "the predicted gap's sign is not resolved by its s.e." if
                           math.isfinite(gse) else "the predicted gap is at a limit of the "
                           "search (no s.e.): the loss does not determine it")
    return row


def _attention_optimum_loss(j: Judging) -> dict:
    return _loss_claim(j, j.theory["attention"], "loss at the attention optimum",
                       "stage-2 optimum", "the regime-A optimum's population loss")


def _below_uniform(j: Judging) -> dict:
    at = j.theory["attention"]
    return _below(j, "below uniform attention", "topic-biased attention lowers the loss",
                  at["uniform_loss"], at.get("uniform_loss_se", 0.0), at["uniform_eval"],
                  at["plateau"], "the uniform-attention loss of the frozen block W^V")


def _bias_pooled(j: Judging) -> dict:
    return verdict("same-topic attention bias (P1 pooling)", "same-topic pairs get more "
                   "attention than cross-topic pairs", ">1", j.get("attention/ratio_all"), 0.0,
                   lambda v: v.min() > 1.0, j.before("attention/ratio_all"),
                   "normalised attention same-topic (identical words included) / cross-topic, "
                   "every seed, correct labels", threshold=1.0,
                   basis=f"eval set ({j.cfg.train.n_eval} documents)")


def _bias_other(j: Judging) -> dict:
    return verdict("same-topic bias, other words only", "(a stricter reading)", ">1",
                   j.get("attention/ratio"), 0.0, lambda v: v.min() > 1.0,
                   j.before("attention/ratio"),
                   "as above with identical words excluded: separates topic bias from copying",
                   threshold=1.0, basis=f"eval set ({j.cfg.train.n_eval} documents)")


def _value_first(j: Judging) -> dict:
    steps = [r["step"] for r in j.history]
    n = len(j.row["dynamics/delta_WV"])
    tv = [t50(steps, [r["dynamics/delta_WV"][i] for r in j.history]) for i in range(n)]
    tq = [t50(steps, [r["dynamics/delta_QK"][i] for r in j.history]) for i in range(n)]
    c = verdict("value-first two-stage order", "W^V learns before W^K, W^Q",
                "t50(W^V) < t50(W^Q W^K^T)", [q - v for v, q in zip(tv, tq)], 0.0,
                lambda d: bool(np.all(d > 0)), None,
                "t50 = first checkpoint with half the final change; measured = t50(QK) - "
                "t50(V) in steps, every seed", basis="checkpoints")
    c["t50_value"], c["t50_qk"] = mean_sd(tv)[0], mean_sd(tq)[0]
    return c


def _below_stage1(j: Judging) -> dict:
    ua = j.theory["uniform_attention"]
    return _below(j, "below the stage-1 plateau",
                  "attention lowers the loss below uniform attention", ua["plateau"],
                  ua["plateau_se"], ua["plateau_eval"], None,
                  "the uniform-attention optimum")


def _bayes_excess(j: Judging) -> dict:
    name = j.theory["reachable_floor"]["name"]
    fl = j.theory["floors"][name]
    stat = "loss/" + name.replace("/", "_")  # the same floor on the eval set (probe)
    m = measured_loss(j)
    v, se, basis, ev = m.values, m.se, m.basis, m.eval_values
    if not m.population and j.get(stat) is not None:  # eval set: the floor on the same positions
        floor, floor_se, gap = mean_sd(j.get(stat))[0], 0.0, np.asarray(v) - np.asarray(j.get(stat))
    else:
        floor, floor_se, gap = fl["loss"], fl["stderr"], np.asarray(v, float) - fl["loss"]
        if not m.population:
            basis += " vs the population floor"
    eval_gap = (np.asarray(ev) - np.asarray(j.get(stat))) if j.get(stat) is not None else None
    c = verdict("excess loss over the Bayes floor", "(reported)", floor, gap, 0.0,
                lambda v: True, None,
                f"{basis} loss minus the floor {name}, {j.theory['reachable_floor']['why']}: "
                "a distance, not a claim", predicted_se=floor_se,
                measured_se=math.hypot(se, floor_se), basis=basis, floor=name,
                predicted_eval=mean_sd(j.get(stat))[0] if j.get(stat) else None,
                measured_eval=mean_sd(eval_gap)[0] if eval_gap is not None else None)
    if m.population:  # where the excess sits: by what the query shows
        c["excess_by_kind"] = {
            k: float(np.mean(j.get(f"loss/pop_loss_{k}")) - f["loss"])
            for k, f in fl.get("by_kind", {}).items() if j.get(f"loss/pop_loss_{k}")}
    c["verdict"] = REPORTED
    return c


register(Claim("block structure (same - cross)", "value map has topic-block structure",
               UNIFORM_1L, ("uniform_attention",), ("blocks/value_gap",), _block_structure))
register(Claim("loss at the uniform-attention optimum", "stage-wise optimum is block-structured",
               UNIFORM_1L, ("uniform_attention",), ("loss/eval_loss",), _uniform_optimum_loss))
register(Claim("embedding Gram: same-topic > cross-topic", "same-topic words have larger "
               "embedding inner products", UNIFORM_1L | {TRAINED_EMBEDDING},
               ("uniform_attention",), ("blocks/gram_gap",), _gram))
register(Claim("score gap (same - cross topic)", "attention is topic-biased",
               frozenset({PAPER_STAGE2}), ("attention",), ("blocks/score_gap",), _score_gap))
register(Claim("loss at the attention optimum", "stage-2 optimum", frozenset({PAPER_STAGE2}),
               ("attention",), ("loss/eval_loss",), _attention_optimum_loss))
register(Claim("below uniform attention", "topic-biased attention lowers the loss",
               frozenset({PAPER_STAGE2}), ("attention",), ("loss/eval_loss",), _below_uniform))
register(Claim("same-topic attention bias (P1 pooling)", "same-topic pairs get more attention "
               "than cross-topic pairs", ATTN_1L, (), ("attention/ratio_all",), _bias_pooled))
register(Claim("same-topic bias, other words only", "(a stricter reading)", ATTN_1L, (),
               ("attention/ratio",), _bias_other))
register(Claim("value-first two-stage order", "W^V learns before W^K, W^Q",
               ATTN_1L | {TRAINED_VALUE}, (), ("dynamics/delta_WV", "dynamics/delta_QK"),
               _value_first))
register(Claim("below the stage-1 plateau", "attention lowers the loss below uniform attention",
               frozenset({TRAINED_ATTENTION, ONE_LAYER, NO_POSITIONS, MLM, BAG_OF_WORDS}),
               ("uniform_attention",), ("loss/eval_loss",), _below_stage1))
register(Claim("excess loss over the Bayes floor", "(reported)", frozenset({BAYES_FLOOR, CE}),
               ("floors", "reachable_floor"), ("loss/eval_loss",), _bayes_excess))
