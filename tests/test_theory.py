"""Bayes-optimal predictor and loss floor (topicdyn.theory.bayes) against independent computations.

Tolerances: exact computations (closed form, DP, subset enumeration) must agree with brute-force
enumeration to float64 round-off (1e-9). Monte Carlo quantities are compared within 4 standard
errors (a false alarm rate of ~6e-5 per comparison for a Gaussian estimator); importance-sampling
predictives within 5 of their own standard errors plus 1e-4 (many comparisons at once).
"""
import itertools
import math

import jax
import numpy as np
import pytest

from topicdyn.config import Config, apply_overrides, preset
from topicdyn.data import topic_word_matrix
from topicdyn.masking import MLMBatch
from topicdyn.theory import (batch_ce, bayes_log_prob, bayes_loss, bayes_predictive,
                             enumerate_batch, topic_posterior)
from topicdyn.theory.population import mc_batches


def tiny(*ov):
    return apply_overrides(Config(), ["data.T=2", "data.v=2", "data.N_min=3", "data.N_max=3",
                                      "data.alpha=0.3", "mask.p_mask=0.4"] + list(ov))


# ---- brute force: enumerate every document and masking outcome ----------------------------
def _moment(cfg, k):
    """E[prod theta^k] by Gamma functions (Dirichlet) or averaging over k-subsets."""
    d = cfg.data

    def dir_moment(kk, K):
        if d.prior == "k_topics" and d.k_weights == "equal":
            return d.k ** -float(sum(kk))
        return math.exp(sum(math.lgamma(d.alpha + x) - math.lgamma(d.alpha) for x in kk)
                        + math.lgamma(K * d.alpha) - math.lgamma(K * d.alpha + sum(kk)))

    if d.prior == "dirichlet":
        return dir_moment(k, d.T)
    subs = list(itertools.combinations(range(d.T), d.k))
    tot = 0.0
    for S in subs:
        if all(k[t] == 0 for t in range(d.T) if t not in S):
            tot += dir_moment([k[t] for t in S], d.k)
    return tot / len(subs)


def _seq_prob(cfg, words):
    beta = topic_word_matrix(cfg.data)
    T = cfg.data.T
    p = 0.0
    for z in itertools.product(range(T), repeat=len(words)):
        lik = np.prod([beta[zz, w] for zz, w in zip(z, words)])
        if lik > 0:
            p += lik * _moment(cfg, np.bincount(z, minlength=T))
    return p


def brute_force(cfg):
    """{observation: (V,) joint P(observation, true word)} and one MLMBatch row per observation.

    observation = (shown token at the query, sorted key tokens other than the query position,
    whether the query position is itself a key); the query is a selected position."""
    d, m = cfg.data, cfg.mask
    V, L = d.V, d.seq_len
    nr = d.V if m.random_source == "content" else d.n_vocab
    opts = [("U", None, 1 - m.p_mask), ("M", d.MASK, m.p_mask * m.p_replace_mask),
            ("K", None, m.p_mask * m.p_keep)]
    opts += [("R", r, m.p_mask * m.p_replace_random / nr) for r in range(nr)]
    opts = [o for o in opts if o[2] > 0]
    acc, rows = {}, {}
    off = 1 if d.start_end else 0
    for N in range(d.N_min, d.N_max + 1):
        for words in itertools.product(range(V), repeat=N):
            pw = _seq_prob(cfg, words) / (d.N_max - d.N_min + 1)
            if pw == 0:
                continue
            for combo in itertools.product(opts, repeat=N):
                p = pw * np.prod([o[2] for o in combo])
                shown = [w if o[1] is None else o[1] for w, o in zip(words, combo)]
                sel = [o[0] != "U" for o in combo]
                specials = [d.START, d.END] if d.start_end else []
                if m.key_set == "unselected":
                    keys = [s for s, x in zip(shown, sel) if not x] + specials
                else:
                    keys = shown + specials
                for i in range(N):
                    if not sel[i]:
                        continue
                    others = list(keys)
                    if m.key_set == "all":
                        others.remove(shown[i])
                    obs = (shown[i], tuple(sorted(others)))
                    acc.setdefault(obs, np.zeros(V))[words[i]] += p
                    if obs not in rows:
                        inp = np.full(L, d.PAD)
                        tgt = np.full(L, d.PAD)
                        if d.start_end:
                            inp[0] = tgt[0] = d.START
                            inp[N + 1] = tgt[N + 1] = d.END
                        inp[off:off + N], tgt[off:off + N] = shown, words
                        s = np.zeros(L, bool)
                        s[off:off + N] = sel
                        valid = tgt != d.PAD
                        km = valid & ~s if m.key_set == "unselected" else valid
                        rows[obs] = (inp, tgt, s, km, valid, off + i)
    return acc, rows


def _batch(rows):
    r = list(rows.values())
    st = lambda j, dt: np.stack([x[j] for x in r]).astype(dt)
    B, L = len(r), len(r[0][0])
    return MLMBatch(st(0, np.int32), st(1, np.int32), st(2, bool), st(3, bool),
                    np.zeros((B, L), np.int32), np.full((B, L), -1, np.int32),
                    np.zeros((B, 2), np.float32), st(4, bool)), [x[5] for x in r]


@pytest.mark.parametrize("name,overrides", [
    # clean keys: Dirichlet-multinomial closed form; random tokens from all ids, START/END
    ("closed form", ["data.start_end=true", "mask.key_set=unselected"]),
    # key_set=all: noisy keys (exact DP); variable length, no START/END
    ("exact DP", ["data.start_end=false", "data.N_min=2", "mask.key_set=all",
                  "mask.random_source=content"]),
    # k-topics prior, Dirichlet weights, noisy keys: DP per topic subset
    ("exact DP", ["data.T=3", "data.v=1", "data.prior=k_topics", "data.k=2",
                  "mask.key_set=all", "data.start_end=false"]),
    # k-topics prior, Dirichlet weights, clean keys: subset-averaged closed form
    ("closed form", ["data.T=3", "data.v=1", "data.prior=k_topics", "data.k=2",
                     "mask.random_source=content"]),
    # Zipf topics (disjoint, non-uniform words), noisy keys: DP with one binomial per word
    ("exact DP", ["data.topic_words=zipf", "mask.key_set=all", "mask.random_source=content"]),
    # k-topics prior with equal weights: theta takes C(T,k) values
    ("exact subsets", ["data.T=3", "data.v=1", "data.prior=k_topics", "data.k=2",
                       "data.k_weights=equal", "mask.random_source=content"]),
])
def test_bayes_predictive_equals_brute_force_enumeration(name, overrides):
    cfg = tiny(*overrides)
    acc, rows = brute_force(cfg)
    batch, pos = _batch(rows)
    pred = bayes_predictive(cfg, batch)
    assert pred.assumptions["estimator"] == name
    V = cfg.data.V
    for b, (obs, joint) in enumerate(acc.items()):
        p = np.exp(pred.log_prob[b, pos[b], :V])
        np.testing.assert_allclose(p, joint / joint.sum(), rtol=0, atol=1e-9, err_msg=str(obs))
        assert np.all(np.isneginf(pred.log_prob[b, pos[b], V:]))


def test_importance_sampling_predictive_within_its_standard_error():
    # overlapping topics (word 1 belongs to both): no closed form, importance sampling
    cfg = tiny("data.topic_words=overlap", "data.overlap=1", "mask.key_set=all",
               "mask.random_source=content")
    acc, rows = brute_force(cfg)
    batch, pos = _batch(rows)
    pred = bayes_predictive(cfg, batch, n_theta=4096)
    assert pred.assumptions["estimator"].startswith("importance sampling")
    V = cfg.data.V
    worst = 0.0
    for b, (obs, joint) in enumerate(acc.items()):
        p = np.exp(pred.log_prob[b, pos[b], :V])
        se = p * pred.stderr[b, pos[b], :V]
        exact = joint / joint.sum()
        assert np.all(np.abs(p - exact) <= 5 * se + 1e-4), (obs, p, exact, se)
        worst = max(worst, np.abs(p - exact).max())
    assert worst < 0.02


def test_noisy_dp_matches_numerical_theta_integration_on_a_long_document():
    # a document far too long to enumerate: E[theta | obs] by plain Monte Carlo over the prior
    cfg = apply_overrides(Config(), ["data.T=3", "data.v=3", "data.alpha=0.5",
                                     "mask.key_set=all", "mask.p_mask=0.5"])
    counts = np.array([[6, 2, 0, 1, 0, 0, 0, 3, 1.0]])
    q, r = 0.8, 0.03
    post = topic_posterior(cfg, counts, q, r)
    assert post.method == "exact DP"
    rng = np.random.default_rng(0)
    th = rng.dirichlet([0.5] * 3, size=400_000)
    beta = topic_word_matrix(cfg.data)
    lik = np.exp(np.log(q * th @ beta + r) @ counts[0])
    w = lik / lik.sum()
    est = w @ th
    se = np.sqrt((w[:, None] ** 2 * (th - est) ** 2).sum(0))
    np.testing.assert_array_less(np.abs(post.mean[0] - est), 4 * se)
    assert abs(post.mean.sum() - 1) < 1e-12
    # and with r -> 0 the DP reduces to the Dirichlet-multinomial closed form
    dp = topic_posterior(cfg, counts, 1.0, 1e-13).mean
    cf = topic_posterior(cfg, counts, 1.0, 0.0).mean
    np.testing.assert_allclose(dp, cf, atol=1e-9)


def _exact_bayes_loss(cfg):
    batch, w = enumerate_batch(cfg)
    lp = bayes_log_prob(cfg, batch)
    sel = np.asarray(batch.selected)
    b, l = np.nonzero(sel)
    ce = -lp[b, l, np.asarray(batch.targets)[b, l]]
    return float(np.sum(w[b] * ce) / np.sum(w[b]))


def test_monte_carlo_bayes_loss_matches_exact_enumeration():
    cfg = tiny("data.N_min=2", "mask.random_source=content")
    exact = _exact_bayes_loss(cfg)
    # large batches: the mean of per-batch ratios is then the ratio of expectations (bias
    # O(1/selected per batch) ~ 1e-3 of the spread, far inside the error)
    est = bayes_loss(cfg, n_batches=40, seed=3, batch_size=500)
    assert abs(est.mean - exact) < 4 * est.stderr, (est.mean, est.stderr, exact)


def test_bayes_floor_below_uniform_unigram_and_a_trained_model(tmp_path):
    from topicdyn.checkpoint import load_params
    from topicdyn.models import get_model
    from topicdyn.run import train
    from topicdyn.training import masked_loss

    # Zipf topics so that unigram and uniform differ
    ov = ["data.T=3", "data.v=4", "data.N_min=10", "data.N_max=20", "data.batch_size=32",
          "data.topic_words=zipf", "train.steps=200", "train.log_every=100",
          "train.ckpt_log_points=0", "train.ckpt_linear_from=200", "train.ckpt_every=200",
          "train.chunk=50", "optim.lr=0.05"]
    cfg = preset("F", ov)
    est = bayes_loss(cfg, n_batches=40, seed=7)
    uni, uni_se = est.baselines["unigram"]
    assert est.baselines["unigram"][0] < est.baselines["uniform_content"][0]
    assert est.mean + 4 * est.stderr < uni - 4 * uni_se
    run = train(cfg, tmp_path / "run", progress=False)
    params = jax.tree.map(lambda x: x[0], load_params(run)[0])
    model = get_model(cfg.model.name)
    diffs = []
    for batch in mc_batches(cfg, 40, 7):
        logits, _ = model.apply(params, batch, cfg)
        diffs.append(float(masked_loss(logits, batch, cfg))
                     - batch_ce(bayes_log_prob(cfg, batch), batch))
    diffs = np.array(diffs)
    # paired over the same batches: the trained model's excess loss is > 4 standard errors
    assert diffs.mean() > 4 * diffs.std(ddof=1) / np.sqrt(len(diffs)), diffs
