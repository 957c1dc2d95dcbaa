"""P1's claims as a registry of small objects: name, the paper's statement, the variant traits
and theory it needs, and a judge.

A claim applies to a run when its variant has every required trait (topicdyn.models.variant),
the theory it compares with was computed for the config (theory.json) and the probe values it
reads exist. Otherwise its row says "not applicable" with the reason; it is never judged against
a theory derived for another model. Add a claim with `register(Claim(...))`.

A judge gets a `Judging` (the probes row, previous row, history, theory, config) and returns a
verdict dict from `verdict(...)`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from topicdyn.models.variant import (BAG_OF_WORDS, CAUSAL, MLM, NO_POSITIONS, ONE_LAYER,
                                     PAPER_STAGE2, TRAINED_ATTENTION, TRAINED_EMBEDDING,
                                     TRAINED_VALUE, UNIFORM_ATTENTION)

NOT_APPLICABLE = "not applicable"


@dataclass(frozen=True)
class Judging:
    row: dict  # probes row: "probe/stat" -> per-seed list
    prev: dict | None  # the previous checkpoint's row
    history: list  # every row up to this one
    theory: dict  # theory.json
    cfg: object  # Config
    traits: frozenset

    def get(self, key):
        return self.row.get(key)

    def before(self, key):
        return self.prev.get(key) if self.prev else None


@dataclass(frozen=True)
class Claim:
    name: str
    paper: str  # the paper's statement
    requires: frozenset  # variant traits
    theory: tuple[str, ...]  # theory.json sections it compares with
    stats: tuple[str, ...]  # probe values it reads
    judge: Callable[[Judging], dict]

    def why_not(self, j: Judging) -> str | None:
        """None if the claim applies; else the reason."""
        missing = sorted(self.requires - j.traits)
        if missing:
            return "variant lacks " + ", ".join(missing)
        for t in self.theory:
            if not j.theory.get(t):
                note = j.theory.get("note")
                return f"no {t} theory for this config" + (f" ({note})" if note else "")
        for s in self.stats:
            if j.get(s) is None:
                return f"probe value {s} not measured"
        return None


CLAIMS: list[Claim] = []


def register(claim: Claim) -> Claim:
    CLAIMS.append(claim)
    return claim


def mean_sd(vals) -> tuple[float, float]:
    """(mean, sample sd) of per-seed values (sd 0 for one seed)."""
    a = np.asarray(vals, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def verdict(name, paper, predicted, measured, tol, ok, prev=None, how="", threshold=None):
    """One claim's verdict. A failing claim is "not yet converged" while it still moves: for a
    claim with a tolerance, by more than tol/5 since the previous checkpoint; for a threshold
    claim (threshold given, e.g. ratio > 1), when it moves towards the threshold fast enough to
    reach it within 10 more checkpoint gaps. A threshold claim that stalls or moves away fails."""
    m, sd = mean_sd(measured)
    result = "pass" if ok(np.asarray(measured, float)) else "fail"
    if result == "fail" and prev is not None:
        step = m - mean_sd(prev)[0]
        if threshold is None:
            moving = abs(step) > tol / 5
        else:
            moving = step * (threshold - m) > 0 and 10 * abs(step) >= abs(threshold - m)
        if moving:
            result = "not yet converged"
    return {"claim": name, "paper": paper, "predicted": predicted, "measured": m, "sd": sd,
            "tolerance": tol, "verdict": result, "how": how}


def not_applicable_row(claim: Claim, reason: str) -> dict:
    return {"claim": claim.name, "paper": claim.paper, "predicted": None, "measured": None,
            "sd": None, "tolerance": None, "verdict": NOT_APPLICABLE, "how": reason}


DIVERGED = "diverged"
NON_FINITE = "non_finite_params"  # probes row key: per seed, parameters not all finite


def judge_all(j: Judging) -> list[dict]:
    """Every registered claim's row for one checkpoint, in registry order ("diverged" for all
    where the checkpoint's parameters are not finite: no statistic of them means anything)."""
    out = []
    if any(j.row.get(NON_FINITE) or []):
        return [{**not_applicable_row(c, "non-finite parameters at this checkpoint"),
                 "verdict": DIVERGED} for c in CLAIMS]
    for c in CLAIMS:
        reason = c.why_not(j)
        out.append(not_applicable_row(c, reason) if reason else c.judge(j))
    return out


def t50(steps, deltas) -> float:
    """First step at which ||W_t - W_0|| reaches half its final value (nan if it never moves)."""
    d = np.asarray(deltas, float)
    if d.size == 0 or d[-1] <= 0:
        return float("nan")
    idx = int(np.argmax(d >= 0.5 * d[-1]))
    return float(steps[idx])


def _loss_tol(j: Judging, value: float) -> float:
    return 0.02 if j.cfg.model.loss == "ce" else 0.02 * value


# ---- the claims -----------------------------------------------------------------------------
UNIFORM_1L = frozenset({UNIFORM_ATTENTION, ONE_LAYER, NO_POSITIONS, MLM})
ATTN_1L = frozenset({TRAINED_ATTENTION, ONE_LAYER, MLM})


def _block_structure(j: Judging) -> dict:
    ua = j.theory["uniform_attention"]
    tol = max(0.1 * abs(ua["gap"]), 3 * ua["gap_se"])
    what = "embedding E (= value map)" if TRAINED_EMBEDDING in j.traits and \
        TRAINED_VALUE not in j.traits else "value map E W^V W_dec"
    return verdict("block structure (same - cross)", f"{what} has topic-block structure",
                   ua["gap"], j.get("blocks/value_gap"), tol,
                   lambda v: abs(v.mean() - ua["gap"]) <= tol, j.before("blocks/value_gap"),
                   "row-centred content block; tolerance 10% or 3 MC s.e.")


def _uniform_optimum_loss(j: Judging) -> dict:
    ua = j.theory["uniform_attention"]
    tol = _loss_tol(j, ua["plateau_eval"])
    return verdict("loss at the uniform-attention optimum",
                   "stage-wise optimum is block-structured", ua["plateau_eval"],
                   j.get("loss/eval_loss"), tol,
                   lambda v: abs(v.mean() - ua["plateau_eval"]) <= tol,
                   j.before("loss/eval_loss"),
                   "eval-set loss vs the symmetric optimum's loss on the same documents")


def _gram(j: Judging) -> dict:
    return verdict("embedding Gram: same-topic > cross-topic", "same-topic words have larger "
                   "embedding inner products", None, j.get("blocks/gram_gap"), 0.0,
                   lambda v: v.min() > 0, None, "row-centred E E^T, every seed")


def _score_gap(j: Judging) -> dict:
    at = j.theory["attention"]
    tol = max(0.15 * abs(at["score_gap"]), 3 * at["score_gap_se"])
    return verdict("score gap (same - cross topic)", "attention is topic-biased",
                   at["score_gap"], j.get("blocks/score_gap"), tol,
                   lambda v: abs(v.mean() - at["score_gap"]) <= tol,
                   j.before("blocks/score_gap"),
                   "row-centred W^Q W^K^T / sqrt(d); tolerance 15% or 3 MC s.e.")


def _attention_optimum_loss(j: Judging) -> dict:
    at = j.theory["attention"]
    tol = _loss_tol(j, at["plateau_eval"])
    return verdict("loss at the attention optimum", "stage-2 optimum", at["plateau_eval"],
                   j.get("loss/eval_loss"), tol,
                   lambda v: abs(v.mean() - at["plateau_eval"]) <= tol,
                   j.before("loss/eval_loss"),
                   "eval-set loss vs the optimum's loss on the same documents")


def _below_uniform(j: Judging) -> dict:
    at = j.theory["attention"]
    return verdict("below uniform attention", "topic-biased attention lowers the loss",
                   at["uniform_eval"], j.get("loss/eval_loss"), 0.0,
                   lambda v: v.max() < at["uniform_eval"], j.before("loss/eval_loss"),
                   "every seed below the uniform-attention loss of the frozen block W^V, eval "
                   "set", threshold=at["uniform_eval"])


def _bias_pooled(j: Judging) -> dict:
    return verdict("same-topic attention bias (P1 pooling)", "same-topic pairs get more "
                   "attention than cross-topic pairs", ">1", j.get("attention/ratio_all"), 0.0,
                   lambda v: v.min() > 1.0, j.before("attention/ratio_all"),
                   "normalised attention same-topic (identical words included) / cross-topic, "
                   "every seed, correct labels", threshold=1.0)


def _bias_other(j: Judging) -> dict:
    return verdict("same-topic bias, other words only", "(a stricter reading)", ">1",
                   j.get("attention/ratio"), 0.0, lambda v: v.min() > 1.0,
                   j.before("attention/ratio"),
                   "as above with identical words excluded: separates topic bias from copying",
                   threshold=1.0)


def _value_first(j: Judging) -> dict:
    steps = [r["step"] for r in j.history]
    n = len(j.row["dynamics/delta_WV"])
    tv = [t50(steps, [r["dynamics/delta_WV"][i] for r in j.history]) for i in range(n)]
    tq = [t50(steps, [r["dynamics/delta_QK"][i] for r in j.history]) for i in range(n)]
    c = verdict("value-first two-stage order", "W^V learns before W^K, W^Q",
                "t50(W^V) < t50(W^Q W^K^T)", [q - v for v, q in zip(tv, tq)], 0.0,
                lambda d: bool(np.all(d > 0)), None,
                "t50 = first checkpoint with half the final change; measured = t50(QK) - "
                "t50(V) in steps, every seed")
    c["t50_value"], c["t50_qk"] = mean_sd(tv)[0], mean_sd(tq)[0]
    return c


def _below_stage1(j: Judging) -> dict:
    ua = j.theory["uniform_attention"]
    return verdict("below the stage-1 plateau",
                   "attention lowers the loss below uniform attention", ua["plateau_eval"],
                   j.get("loss/eval_loss"), 0.0, lambda v: v.max() < ua["plateau_eval"],
                   j.before("loss/eval_loss"),
                   "every seed below the uniform-attention optimum on the eval set",
                   threshold=ua["plateau_eval"])


def _bayes_excess(j: Judging) -> dict:
    floor = float(np.mean(j.get("loss/bayes_loss")))
    gap = [a - b for a, b in zip(j.get("loss/eval_loss"), j.get("loss/bayes_loss"))]
    c = verdict("excess loss over the Bayes floor", "(reported)", floor, gap, 0.0,
                lambda v: True, None, "eval loss minus Bayes-optimal loss on the same "
                "positions: a distance, not a claim")
    c["verdict"] = "reported"
    return c


CE = "ce_loss"  # pseudo-trait: model.loss=ce (added by traits_for)
BAYES_FLOOR = "bayes_floor"  # pseudo-trait: an LDA Bayes floor exists (masked-token, next-token)

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
register(Claim("excess loss over the Bayes floor", "(reported)", frozenset({BAYES_FLOOR, CE}), (),
               ("loss/bayes_loss", "loss/eval_loss"), _bayes_excess))


def traits_for(cfg) -> frozenset:
    """The variant's traits for cfg, plus the pseudo-traits CE (cross-entropy loss) and
    BAYES_FLOOR (an objective the theory has a Bayes predictor for)."""
    from topicdyn.models import get_variant

    t = get_variant(cfg.model.name).traits(cfg)
    extra = ({CE} if cfg.model.loss == "ce" else set()) | (
        {BAYES_FLOOR} if t & {MLM, CAUSAL} else set())
    return t | extra
