"""Every claim can fail: synthetic probe rows that each verdict must reject, the cases it must
call "not decidable here", and the tolerances recomputed by hand (topicdyn.claims)."""
from __future__ import annotations

import math

import pytest

from topicdyn.config import preset
from topicdyn.verdicts import judge

FLOORS = {"floors": {"bayes/query": {"loss": 2.91, "stderr": 0.003, "by_kind": {
    "mask": {"loss": 3.17, "stderr": 0.003}, "keep": {"loss": 0.28, "stderr": 0.002}}},
    "bayes/visible": {"loss": 3.17, "stderr": 0.003, "by_kind": {}}}}
UA = {"gap": 5.0, "gap_se": 0.01, "diag_minus_same": 0.0, "diag_minus_same_se": 0.1,
      "plateau": 3.0, "plateau_se": 0.002, "plateau_eval": 3.04}
AT = {"score_gap": 2.66, "score_gap_se": 0.06, "pair_ratio": 14.3, "plateau": 4.185,
      "plateau_se": 0.0013, "plateau_eval": 4.203, "uniform_loss": 4.2256,
      "uniform_loss_se": 0.0014, "uniform_eval": 4.241,
      "gap_profile": {"gap_low": 1.33, "gap_high": 5.32, "rise_low": 4e-4, "rise_high": 1.7e-3,
                      "flat": True, "flat_nats": 1e-3}}


def _theory(reach="bayes/query", **sections):
    return {**FLOORS, "reachable_floor": {"name": reach, "why": "test"}, **sections}


def _judge(preset_name, row, theory, prev=None, history=None):
    cfg = preset(preset_name)
    row = {"step": 100, **row}
    return {c["claim"]: c for c in judge(row, theory, cfg, prev, history or [row])}


def _loss(pop, se=0.004, ev=None):
    return {"loss/pop_loss": pop, "loss/pop_loss_se": [se] * len(pop),
            "loss/eval_loss": ev or pop, "loss/bayes_query": [2.9] * len(pop),
            "loss/bayes_visible": [3.16] * len(pop)}


def _tol(phys, *ses):  # the documented rule, recomputed here
    return math.sqrt(phys ** 2 + 9 * sum(s * s for s in ses))


# ---- regime V: uniform attention ------------------------------------------------------------
def _v_row(gap=(5.0, 5.1), pop=(3.0, 3.01), gram=(0.1, 0.2), ev=None):
    return {"blocks/value_gap": list(gap), "blocks/gram_gap": list(gram),
            **_loss(list(pop), ev=ev)}


def test_uniform_attention_claims_pass_and_say_what_they_compare():
    c = _judge("V", _v_row(), _theory("bayes/visible", uniform_attention=UA))
    loss = c["loss at the uniform-attention optimum"]
    assert loss["verdict"] == "pass" and loss["basis"].startswith("population")
    assert loss["predicted"] == UA["plateau"] and loss["predicted_se"] == UA["plateau_se"]
    assert loss["predicted_eval"] == UA["plateau_eval"]
    assert abs(loss["tolerance"] - _tol(0.02, 0.002, 0.004)) < 1e-12
    assert c["block structure (same - cross)"]["verdict"] == "pass"
    ex = c["excess loss over the Bayes floor"]
    assert ex["verdict"] == "reported" and ex["floor"] == "bayes/visible"
    assert abs(ex["measured"] - (3.005 - 3.17)) < 1e-9
    assert abs(ex["measured_se"] - math.hypot(0.004, 0.003)) < 1e-12


@pytest.mark.parametrize("offset,verdict", [(0.022, "pass"), (0.026, "fail")])
def test_loss_tolerance_combines_both_errors(offset, verdict):
    # tol = sqrt(0.02^2 + 9 (0.002^2 + 0.004^2)) = 0.0241
    pop = [3.0 + offset] * 2
    row = _v_row(pop=pop)
    c = _judge("V", row, _theory(uniform_attention=UA), prev=row)
    assert c["loss at the uniform-attention optimum"]["verdict"] == verdict


def test_population_is_judged_not_the_eval_set():
    """The eval-set pair agrees (3.04 vs 3.04), the population loss does not: fail."""
    row = _v_row(pop=(3.1, 3.1), ev=[3.04, 3.04])
    c = _judge("V", row, _theory(uniform_attention=UA), prev=row)
    loss = c["loss at the uniform-attention optimum"]
    assert loss["verdict"] == "fail" and loss["measured_eval"] == 3.04


def test_without_population_estimate_the_eval_set_is_judged_and_labelled():
    row = {"blocks/value_gap": [5.0], "blocks/gram_gap": [0.1], "loss/eval_loss": [3.04]}
    loss = _judge("V", row, _theory(uniform_attention=UA))["loss at the uniform-attention optimum"]
    assert loss["verdict"] == "pass" and loss["basis"].startswith("eval set")
    assert loss["predicted"] == UA["plateau_eval"]


@pytest.mark.parametrize("claim,row", [
    ("block structure (same - cross)", _v_row(gap=(2.0, 2.1))),
    ("loss at the uniform-attention optimum", _v_row(pop=(3.2, 3.25))),
    ("embedding Gram: same-topic > cross-topic", _v_row(gram=(-0.1, 0.2))),
])
def test_uniform_attention_claims_reject(claim, row):
    c = _judge("E" if "Gram" in claim else "V", row, _theory(uniform_attention=UA), prev=row)
    assert c[claim]["verdict"] == "fail"


def test_block_gap_with_a_huge_error_is_not_decidable():
    ua = {**UA, "gap_se": 3.0}
    c = _judge("V", _v_row(), _theory(uniform_attention=ua))
    assert c["block structure (same - cross)"]["verdict"] == "not decidable here"


# ---- regime A: the paper's stage-2 model ----------------------------------------------------
def _a_row(gap=(2.2, 2.3), pop=(4.186, 4.187), ratio=(2.0, 2.0)):
    return {"blocks/score_gap": list(gap), "attention/ratio": list(ratio),
            "attention/ratio_all": list(ratio), **_loss(list(pop))}


def test_flat_score_gap_is_judged_on_sign_and_order_of_magnitude():
    c = _judge("A", _a_row(), _theory(attention=AT))
    gap = c["score gap (same - cross topic)"]
    assert gap["verdict"] == "pass" and "flat" in gap["how"] and "drift" in gap["how"]
    for vals in ((0.5, 0.6), (-1.0, 2.0), (12.0, 11.0)):  # factor > 3.2, mixed sign, too big
        c = _judge("A", _a_row(gap=vals), _theory(attention=AT))
        assert c["score gap (same - cross topic)"]["verdict"] == "fail", vals


@pytest.mark.parametrize("at", [{**AT, "score_gap_se": 2.9},   # A-keep0: sign not resolved
                                {**AT, "score_gap": 0.3},      # too small to have a sign
                                {**AT, "score_gap": -5.9, "score_gap_se": float("nan")}])
def test_flat_score_gap_not_decidable(at):
    c = _judge("A", _a_row(), _theory(attention=at))
    assert c["score gap (same - cross topic)"]["verdict"] == "not decidable here"


def test_identified_score_gap_uses_its_tolerance():
    at = {**AT, "gap_profile": {**AT["gap_profile"], "flat": False}}
    c = _judge("A", _a_row(gap=(2.6, 2.7)), _theory(attention=at))
    assert c["score gap (same - cross topic)"]["verdict"] == "pass"
    row = _a_row(gap=(1.9, 1.9))
    c = _judge("A", row, _theory(attention=at), prev=row)
    assert c["score gap (same - cross topic)"]["verdict"] == "fail"
    c = _judge("A", _a_row(), _theory(attention={**at, "score_gap_se": 2.9}))
    assert c["score gap (same - cross topic)"]["verdict"] == "not decidable here"


def test_attention_optimum_and_below_uniform():
    c = _judge("A", _a_row(), _theory(attention=AT))
    assert c["loss at the attention optimum"]["verdict"] == "pass"
    assert c["below uniform attention"]["verdict"] == "pass"
    row = _a_row(pop=(4.23, 4.19))  # one seed above the uniform-attention loss
    c = _judge("A", row, _theory(attention=AT), prev=row)
    assert c["below uniform attention"]["verdict"] == "fail"
    row = _a_row(pop=(4.22, 4.22))  # below, but by less than 2 combined s.e. (0.0085)
    c = _judge("A", row, _theory(attention=AT), prev=row)
    assert c["below uniform attention"]["verdict"] == "fail"
    assert c["loss at the attention optimum"]["verdict"] == "fail"


def test_below_uniform_not_decidable_when_the_optimum_is_within_the_errors():
    at = {**AT, "uniform_loss": AT["plateau"] + 0.005}
    c = _judge("A", _a_row(), _theory(attention=at))
    assert c["below uniform attention"]["verdict"] == "not decidable here"


# ---- regime F: the full model ---------------------------------------------------------------
def _f_history(v_first=True):
    rows = []
    for i, step in enumerate((0, 100, 200, 300, 400)):
        fast, slow = [0, 5, 9, 10, 10][i], [0, 0, 1, 6, 10][i]
        wv, qk = (fast, slow) if v_first else (slow, fast)
        rows.append({"step": step, "dynamics/delta_WV": [wv, wv], "dynamics/delta_QK": [qk, qk],
                     "attention/ratio": [1.2, 1.3], "attention/ratio_all": [2.0, 2.0],
                     **_loss([3.2, 3.2])})
    return rows


def test_full_model_claims_pass_and_reject():
    th = _theory(uniform_attention={**UA, "plateau": 3.36})
    h = _f_history()
    c = _judge("F", h[-1], th, h[-2], h)
    assert c["value-first two-stage order"]["verdict"] == "pass"
    assert c["same-topic bias, other words only"]["verdict"] == "pass"
    assert c["below the stage-1 plateau"]["verdict"] == "pass"
    h = _f_history(v_first=False)
    for r in h:
        r.update({"attention/ratio": [0.9, 1.2], "attention/ratio_all": [0.8, 0.8],
                  **_loss([3.5, 3.5])})
    c = _judge("F", h[-1], th, h[-2], h)
    for claim in ("value-first two-stage order", "same-topic bias, other words only",
                  "same-topic attention bias (P1 pooling)", "below the stage-1 plateau"):
        assert c[claim]["verdict"] == "fail", claim
