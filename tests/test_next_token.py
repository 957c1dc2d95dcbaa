"""The next-token Bayes predictor (topicdyn.theory.next_token), the causal objective's floor.

Checked against two independent computations: the Dirichlet closed form for disjoint topics
(posterior Dirichlet(alpha + topic counts of the prefix)), and brute-force enumeration of the
topic subsets of a k_topics prior with equal weights over an explicit, overlapping beta.
"""
import itertools

import jax
import numpy as np

from topicdyn.config import preset
from topicdyn.masking import sample_batch
from topicdyn.theory import bayes_log_prob, bayes_loss, batch_ce
from topicdyn.theory.next_token import next_token_predictive

CAUSAL = ["mask.objective=causal", "data.N_min=4", "data.N_max=7", "data.batch_size=16"]


def _batch(cfg, seed=0):
    return jax.device_get(sample_batch(jax.random.PRNGKey(seed), cfg.data, cfg.mask))


def _selected(batch):
    return [(b, i) for b, i in zip(*np.nonzero(np.asarray(batch.selected)))]


def test_disjoint_dirichlet_closed_form():
    cfg = preset("F", CAUSAL + ["data.T=3", "data.v=2", "data.alpha=0.4"])
    T, v, V, a = 3, 2, 6, 0.4
    batch = _batch(cfg)
    logp = next_token_predictive(cfg, batch).log_prob
    toks = np.asarray(batch.inputs)
    checked = 0
    for b, i in _selected(batch):
        prefix = [t for t in toks[b, : i + 1] if t < V]
        n_t = np.bincount(np.array(prefix, int) // v, minlength=T)
        want = np.array([(a + n_t[w // v]) / (T * a + len(prefix)) / v for w in range(V)])
        np.testing.assert_allclose(np.exp(logp[b, i, :V]), want, rtol=1e-10)
        assert np.all(np.isneginf(logp[b, i, V:]))
        checked += 1
    assert checked > 20


def test_k_topics_equal_weights_brute_force():
    beta = ((0.5, 0.3, 0.2, 0.0), (0.0, 0.2, 0.3, 0.5), (0.25, 0.25, 0.25, 0.25))
    cfg = preset("F", CAUSAL + ["data.T=3", "data.topic_words=explicit",
                                f"data.beta={list(map(list, beta))}", "data.prior=k_topics",
                                "data.k=2", "data.k_weights=equal"])
    B = np.array(beta)
    subsets = [B[list(s)].mean(0) for s in itertools.combinations(range(3), 2)]  # p_S(w)
    batch = _batch(cfg, seed=3)
    logp = bayes_log_prob(cfg, batch)  # the objective dispatch of the public entry point
    toks = np.asarray(batch.inputs)
    for b, i in _selected(batch):
        prefix = [t for t in toks[b, : i + 1] if t < 4]
        lik = np.array([np.prod(p[prefix]) for p in subsets])  # uniform prior over subsets
        want = sum(li * p for li, p in zip(lik, subsets)) / lik.sum()
        np.testing.assert_allclose(np.exp(logp[b, i, :4]), want, rtol=1e-9, atol=1e-300)


def test_causal_floor_is_below_the_baselines_and_is_the_loss_per_position():
    cfg = preset("F", CAUSAL + ["data.T=3", "data.v=3", "data.alpha=0.2"])
    est = bayes_loss(cfg, n_batches=6, seed=5)
    assert est.assumptions["conditioning"].startswith("the clean prefix")
    assert "bayes_without_query_token" not in est.baselines
    # uniform topic words: the unigram is uniform over the content words (the same loss)
    assert est.mean < est.baselines["unigram"][0]
    np.testing.assert_allclose(est.baselines["unigram"][0], est.baselines["uniform_content"][0],
                               rtol=1e-12)
    # the floor is the predictor's loss per selected position over the same batches
    from topicdyn.theory.population import mc_batches

    per, n = [], []
    for b in mc_batches(cfg, 6, 5, None):
        per.append(batch_ce(next_token_predictive(cfg, b).log_prob, b))
        n.append(int(np.asarray(b.selected).sum()))
    np.testing.assert_allclose(est.mean, np.dot(per, n) / np.sum(n), rtol=1e-12)
