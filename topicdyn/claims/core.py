"""Claims as a registry of small objects: name, the paper's statement, the variant traits and
theory it needs, and a judge (the claims themselves: claims/p1.py).

A claim applies to a run when its variant has every required trait (topicdyn.models.variant),
the theory it compares with was computed for the config (theory.json) and the probe values it
reads exist. Otherwise its row says "not applicable" with the reason; it is never judged against
a theory derived for another model. Add a claim with `register(Claim(...))`.

A judge gets a `Judging` (the probes row, previous row, history, theory, config) and returns a
verdict dict from `verdict(...)`. Verdicts: pass / fail / not yet converged; "not decidable
here" where the claim's tolerance admits every plausible value (a pass would say nothing);
"reported" for a distance that is not a claim. A row says what its numbers are: `predicted_se`
and `measured_se` (Monte Carlo errors), `basis` (population estimate or the fixed evaluation
set) and, for loss claims, the paired eval-set values `predicted_eval` / `measured_eval`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from topicdyn.models.variant import CAUSAL, MLM

NOT_APPLICABLE = "not applicable"
PASS, FAIL, NOT_CONVERGED = "pass", "fail", "not yet converged"
NOT_DECIDABLE = "not decidable here"
HOLDS, REFUTED = "holds", "refuted"  # the embedding-space claims' words for pass / fail
REPORTED = "reported"


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
    opt_in: bool = False  # judged only at rows holding one of its stats (opt-in probes) ...
    triggers: tuple[str, ...] = ()  # ... or, if given, one of these instead

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


ROW_EXTRAS = ("predicted_se", "measured_se", "basis", "predicted_eval", "measured_eval",
              "floor")  # every row has these keys (None where they do not apply)


def verdict(name, paper, predicted, measured, tol, ok, prev=None, how="", threshold=None,
            **extra):
    """One claim's verdict. A failing claim is "not yet converged" while it still moves: for a
    claim with a tolerance, by more than tol/5 since the previous checkpoint; for a threshold
    claim (threshold given, e.g. ratio > 1), when it moves towards the threshold fast enough to
    reach it within 10 more checkpoint gaps. A threshold claim that stalls or moves away fails.
    extra: ROW_EXTRAS values and claim-specific fields."""
    m, sd = mean_sd(measured)
    result = PASS if ok(np.asarray(measured, float)) else FAIL
    if result == FAIL and prev is not None:
        step = m - mean_sd(prev)[0]
        if threshold is None:
            moving = abs(step) > tol / 5
        else:
            moving = step * (threshold - m) > 0 and 10 * abs(step) >= abs(threshold - m)
        if moving:
            result = NOT_CONVERGED
    return {"claim": name, "paper": paper, "predicted": predicted, "measured": m, "sd": sd,
            "tolerance": tol, "verdict": result, "how": how,
            **{k: None for k in ROW_EXTRAS}, **extra}


def combined_tolerance(tol_phys: float, *ses: float) -> float:
    """sqrt(tol_phys^2 + 9 sum se^2): a physical tolerance widened by 3 combined standard errors
    (the prediction's and the measurement's Monte Carlo errors, independent)."""
    return float(np.sqrt(tol_phys ** 2 + 9.0 * sum(s * s for s in ses)))


def undecidable(row: dict, why: str) -> dict:
    """The row as "not decidable here": its test could not fail (or pass) on the evidence."""
    return {**row, "verdict": NOT_DECIDABLE, "how": f"{why}; {row['how']}"}


def not_applicable_row(claim: Claim, reason: str) -> dict:
    return {"claim": claim.name, "paper": claim.paper, "predicted": None, "measured": None,
            "sd": None, "tolerance": None, "verdict": NOT_APPLICABLE, "how": reason,
            **{k: None for k in ROW_EXTRAS}}


DIVERGED = "diverged"
NON_FINITE = "non_finite_params"  # probes row key: per seed, parameters not all finite


def judge_all(j: Judging) -> list[dict]:
    """Every registered claim's row for one checkpoint, in registry order ("diverged" for all
    where the checkpoint's parameters are not finite: no statistic of them means anything)."""
    out = []
    if any(j.row.get(NON_FINITE) or []):
        return [{**not_applicable_row(c, "non-finite parameters at this checkpoint"),
                 "verdict": DIVERGED} for c in CLAIMS if not c.opt_in]
    for c in CLAIMS:
        if c.opt_in and not any(j.get(s) is not None for s in c.triggers or c.stats):
            continue
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


CE = "ce_loss"  # pseudo-trait: model.loss=ce (added by traits_for)
BAYES_FLOOR = "bayes_floor"  # pseudo-trait: an LDA Bayes floor exists (masked-token, next-token)


def traits_for(cfg) -> frozenset:
    """The variant's traits for cfg, plus the pseudo-traits CE (cross-entropy loss) and
    BAYES_FLOOR (an objective the theory has a Bayes predictor for)."""
    from topicdyn.models import get_variant

    t = get_variant(cfg.model.name).traits(cfg)
    extra = ({CE} if cfg.model.loss == "ce" else set()) | (
        {BAYES_FLOOR} if t & {MLM, CAUSAL} else set())
    return t | extra
