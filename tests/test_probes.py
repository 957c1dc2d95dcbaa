"""Probe statistics against brute-force numpy loops; verdict logic on synthetic inputs."""
import jax.numpy as jnp
import numpy as np
import pytest

from topicdyn.config import preset
from topicdyn.probes.reference_stat import reference_batch, reference_labels, reference_stats
from topicdyn.probes.stats import attention_stats, block_stats, stable_rank
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


def test_stable_rank_of_large_matrices_matches_svd():
    # above DENSE_EIG_MAX columns the top eigenvalue comes from Lanczos iteration
    rng = np.random.default_rng(2)
    M = rng.normal(size=(2, 400, 300)).astype(np.float32) * np.linspace(0.1, 1, 300)
    M[1] += 5 * np.outer(rng.normal(size=400), rng.normal(size=300))  # one dominant direction
    s = np.linalg.svd(M.astype(np.float64), compute_uv=False)
    want = (s ** 2).sum(-1) / s[:, 0] ** 2
    np.testing.assert_allclose(np.asarray(stable_rank(jnp.asarray(M))), want, rtol=1e-6)
    C = M[0] - M[0].mean(1, keepdims=True)  # rows summing to 0: orthogonal to a constant vector
    s = np.linalg.svd(C.astype(np.float64), compute_uv=False)
    np.testing.assert_allclose(float(stable_rank(jnp.asarray(C))), (s ** 2).sum() / s[0] ** 2,
                               rtol=1e-6)
    assert float(stable_rank(jnp.zeros((400, 300)))) == 0.0


def _authors_statistic(docs, attn, cut=100):
    """The authors' compare_topic_and_non_topic_attention as loops, in their vocabulary: docs
    are lists of their token ids (PAD 0, MASK 1, START 2, END 3, word w -> w + 4), attn[b] the
    head-averaged (n, n) attention of document b; the topic table is {w: w // v} over word
    indices w < V, looked up with the token id."""
    V, v = 100, 10
    table = {w: w // v for w in range(V)}
    cats = {"same": [], "topic": [], "non": []}
    for b, doc in enumerate(docs):
        doc = doc[:cut]
        for i, ti in enumerate(doc):
            for j, tj in enumerate(doc):
                a = attn[b][i, j] * len(doc) / cut
                if i == j or ti == tj:
                    cats["same"].append(a)
                elif ti not in table or tj not in table:
                    continue
                elif table[ti] == table[tj]:
                    cats["topic"].append(a)
                else:
                    cats["non"].append(a)
    return {k: np.mean(x) for k, x in cats.items()}


def test_reference_statistic_matches_the_authors_loops():
    cfg = preset("F")
    d = cfg.data
    assert (d.V, d.v) == (100, 10) and d.start_end
    lab = reference_labels(cfg)
    words = np.arange(d.V)
    assert abs(np.mean(lab[:d.V] != words // d.v) - 0.4) < 1e-12  # BRIEF §5: 40% wrong or none
    assert np.all(lab[d.V - 4:d.V] == -1) and lab[d.START] == 0 and lab[d.END] == 0
    rng = np.random.default_rng(3)
    B, L = 3, d.N_max + 2
    lengths = [L - 2, 40, 7]  # words per document
    inputs = np.full((B, L), d.PAD)
    valid = np.zeros((B, L), bool)
    for b, n in enumerate(lengths):
        w = rng.choice(np.r_[rng.integers(0, d.V, n), np.arange(d.V - 4, d.V)], n)
        inputs[b, :n + 2] = np.r_[d.START, w, d.END]
        valid[b, :n + 2] = True
    from topicdyn.masking import MLMBatch
    z = np.zeros((B, L), bool)
    batch = MLMBatch(inputs, inputs, z, valid, z.astype(int), z.astype(int) - 1,
                     np.zeros((B, d.T)), valid)
    rb = reference_batch(cfg, batch)
    theirs = {d.PAD: 0, d.MASK: 1, d.START: 2, d.END: 3}
    docs = []
    for b, n in enumerate(lengths):
        doc = [theirs.get(t, t + 4) for t in inputs[b, :n + 1]]  # START + words but the last
        docs.append(doc)
        assert int(rb.valid[b].sum()) == min(len(doc), 100)
    Lr = rb.inputs.shape[1]
    logits = rng.normal(size=(B, 2, Lr, Lr)) * 2
    ok = np.asarray(rb.valid)
    a = np.exp(logits) * ok[:, None, None, :]
    a /= a.sum(-1, keepdims=True)
    want = _authors_statistic(docs, [a[b].mean(0) for b in range(B)])
    got = reference_stats(jnp.asarray(a), jnp.asarray(rb.inputs), jnp.asarray(ok),
                          jnp.asarray(lab))
    np.testing.assert_allclose(float(got["same_token"]), want["same"], rtol=1e-4)
    np.testing.assert_allclose(float(got["same_topic"]), want["topic"], rtol=1e-4)
    np.testing.assert_allclose(float(got["cross_topic"]), want["non"], rtol=1e-4)
    np.testing.assert_allclose(float(got["ratio"]), want["topic"] / want["non"], rtol=1e-4)


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
