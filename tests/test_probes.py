"""Probe statistics against brute-force numpy loops; verdict logic on synthetic inputs."""
import jax.numpy as jnp
import numpy as np
import pytest

from topicdyn.config import preset
from topicdyn.probes.stats import (attention_stats, block_stats, reference_topic_labels,
                                   stable_rank)
from topicdyn.verdicts import judge, t50


def test_block_stats_matches_loops():
    rng = np.random.default_rng(0)
    wt = np.repeat(np.arange(3), 4)  # 3 topics x 4 words
    M = rng.normal(size=(14, 14))  # 12 content words + 2 extra rows/cols that must be ignored
    diag, same, cross = [], [], []
    for i in range(12):
        for j in range(12):
            (diag if i == j else same if wt[i] == wt[j] else cross).append(M[i, j])
    fitted = np.array([[np.mean(diag) if i == j else np.mean(same) if wt[i] == wt[j]
                        else np.mean(cross) for j in range(12)] for i in range(12)])
    A = M[:12, :12]
    r2 = 1 - ((A - fitted) ** 2).sum() / ((A - A.mean()) ** 2).sum()
    got = block_stats(jnp.asarray(M), wt)
    np.testing.assert_allclose(float(got["diag"]), np.mean(diag), rtol=1e-5)
    np.testing.assert_allclose(float(got["same"]), np.mean(same), rtol=1e-5)
    np.testing.assert_allclose(float(got["cross"]), np.mean(cross), rtol=1e-5)
    np.testing.assert_allclose(float(got["gap"]), np.mean(same) - np.mean(cross), rtol=1e-5)
    np.testing.assert_allclose(float(got["block_score"]), r2, rtol=1e-4)
    exact = block_stats(jnp.asarray(fitted), wt)
    assert abs(float(exact["block_score"]) - 1.0) < 1e-6


def test_stable_rank_closed_form():
    u = np.linalg.qr(np.random.default_rng(1).normal(size=(6, 6)))[0]
    M = u @ np.diag([3.0, 2.0, 1.0, 0, 0, 0]) @ u.T
    assert abs(float(stable_rank(jnp.asarray(M))) - (9 + 4 + 1) / 9) < 1e-4


def test_reference_labelling_reproduces_the_bug():
    V, v = 100, 10
    lab = reference_topic_labels(V, v)
    correct = np.arange(V) // v
    assert abs(np.mean(lab[:V] != correct) - 0.4) < 1e-12  # BRIEF §5: 40% wrong
    assert lab[V + 1] == 0  # START counts as a topic-0 word


def test_attention_stats_brute_force():
    rng = np.random.default_rng(2)
    B, H, L, nv = 2, 2, 7, 10
    labels = np.array([0, 0, 1, 1, 2, 2, -1, -1, -1, -1])
    tok = rng.integers(0, nv, size=(B, L))
    keym = rng.random((B, L)) < 0.7
    keym[:, 0] = True
    qok = rng.random((B, L)) < 0.8
    logits = rng.normal(size=(B, H, L, L))
    a = np.exp(logits) * keym[:, None, None, :]
    a /= a.sum(-1, keepdims=True)
    am = a.mean(1)
    sums = {"same_token": [], "same_topic": [], "cross_topic": []}
    kls = []
    for b in range(B):
        nk = keym[b].sum()
        for i in range(L):
            if not qok[b, i] or labels[tok[b, i]] < 0:
                continue
            kls.append(sum(am[b, i, j] * np.log(am[b, i, j] * nk) for j in range(L) if keym[b, j]))
            for j in range(L):
                if not keym[b, j] or labels[tok[b, j]] < 0:
                    continue
                if tok[b, j] == tok[b, i]:
                    sums["same_token"].append(am[b, i, j] * nk)
                elif labels[tok[b, j]] == labels[tok[b, i]]:
                    sums["same_topic"].append(am[b, i, j] * nk)
                else:
                    sums["cross_topic"].append(am[b, i, j] * nk)
    got = attention_stats(jnp.asarray(a), jnp.asarray(tok), jnp.asarray(tok), jnp.asarray(keym),
                          jnp.asarray(qok), jnp.asarray(labels))
    for k, v in sums.items():
        np.testing.assert_allclose(float(got[k]), np.mean(v), rtol=1e-4)
    pooled = np.mean(sums["same_token"] + sums["same_topic"]) / np.mean(sums["cross_topic"])
    np.testing.assert_allclose(float(got["ratio_all"]), pooled, rtol=1e-4)
    np.testing.assert_allclose(float(got["kl_uniform"]), np.mean(kls), rtol=1e-4, atol=1e-6)
    # uniform attention is 1 in every category and 0 KL
    u = keym[:, None, None, :] / keym.sum(-1)[:, None, None, None] * np.ones((B, H, L, L))
    gu = attention_stats(jnp.asarray(u), jnp.asarray(tok), jnp.asarray(tok), jnp.asarray(keym),
                         jnp.asarray(qok), jnp.asarray(labels))
    for k in ("same_token", "same_topic", "cross_topic", "ratio"):
        assert abs(float(gu[k]) - 1.0) < 1e-5
    assert abs(float(gu["ratio_all"]) - 1.0) < 1e-5
    assert abs(float(gu["kl_uniform"])) < 1e-6


def test_t50():
    steps = [0, 10, 20, 40, 80]
    assert t50(steps, [0, 1, 2, 3, 4]) == 20  # half of the final 4 is first reached at 20
    assert np.isnan(t50(steps, [0, 0, 0, 0, 0]))


def _row(step, gap, loss):
    return {"step": step, "blocks/value_gap": gap, "loss/eval_loss": loss}


@pytest.mark.parametrize("gap,prev_gap,verdict", [
    ([5.0, 5.2], None, "pass"),          # within 10% of 5.0
    ([3.0, 3.1], [3.0, 3.05], "fail"),   # off, and no longer moving
    ([3.0, 3.1], [1.0, 1.1], "not yet converged"),  # off, still moving fast
])
def test_judge_verdicts(gap, prev_gap, verdict):
    cfg = preset("V")
    theory = {"uniform_attention": {"gap": 5.0, "gap_se": 0.01, "plateau_eval": 3.0,
                                    "plateau": 3.0, "plateau_se": 0.01,
                                    "diag_minus_same": 0.0, "diag_minus_same_se": 0.1}}
    prev = _row(10, prev_gap, [3.5, 3.5]) if prev_gap else None
    claims = {c["claim"]: c for c in judge(_row(20, gap, [3.01, 3.0]), theory, cfg, prev)}
    assert claims["block structure (same - cross)"]["verdict"] == verdict
    assert claims["loss at the uniform-attention optimum"]["verdict"] == "pass"


@pytest.mark.parametrize("ratio,prev_ratio,verdict", [
    ([1.5, 1.2], [0.5, 0.6], "pass"),
    ([0.9, 0.9], [0.8, 0.8], "not yet converged"),  # 0.1 below 1, rising 0.1 a checkpoint
    ([0.5, 0.5], [0.49, 0.49], "fail"),  # rising, but 50 checkpoint gaps from 1 at that pace
    ([0.56, 0.56], [0.6, 0.6], "fail"),  # moving away from the threshold
])
def test_threshold_claim_trend(ratio, prev_ratio, verdict):
    cfg = preset("F")
    row = {"step": 20, "attention/ratio": ratio, "attention/ratio_all": [2.0, 2.0]}
    prev = {"step": 10, "attention/ratio": prev_ratio, "attention/ratio_all": [2.0, 2.0]}
    claims = {c["claim"]: c for c in judge(row, {}, cfg, prev)}
    assert claims["same-topic bias, other words only"]["verdict"] == verdict
    assert claims["same-topic attention bias (P1 pooling)"]["verdict"] == "pass"
