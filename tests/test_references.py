"""Exact references of the generator (theory/references.py) against brute force: sums over
every document, and the real sampler's frequencies."""
from __future__ import annotations

import itertools

import jax
import numpy as np
import pytest

from topicdyn.config import preset
from topicdyn.data import sample_documents, sample_theta
from topicdyn.theory.references import doc_log_likelihood, pmi, topic_moments, word_probabilities

PRIORS = {"dirichlet": ["data.alpha=0.3"], "k_topics": ["data.prior=k_topics", "data.k=2"],
          "k_equal": ["data.prior=k_topics", "data.k=2", "data.k_weights=equal"]}


def _cfg(prior, T=3, v=2, N=3):
    return preset("F", [f"data.T={T}", f"data.v={v}", f"data.N_min={N}", f"data.N_max={N}",
                        "data.start_end=false"] + PRIORS[prior])


@pytest.mark.parametrize("prior", list(PRIORS))
def test_likelihood_sums_to_one_and_is_exchangeable(prior):
    cfg = _cfg(prior)
    V = cfg.data.V
    docs = list(itertools.product(range(V), repeat=3))
    p = np.array([np.exp(doc_log_likelihood(cfg, x)) for x in docs])
    assert abs(p.sum() - 1.0) < 1e-12
    for x in docs[:20]:
        for y in itertools.permutations(x):
            a, b = doc_log_likelihood(cfg, y), doc_log_likelihood(cfg, x)
            assert a == b or abs(a - b) < 1e-12, (x, y)


def _sampled(cfg, n, seed=0):
    docs = jax.device_get(sample_documents(jax.random.PRNGKey(seed), cfg.data, n))
    return np.asarray(docs.tokens)[:, :cfg.data.N_max]


@pytest.mark.parametrize("prior", list(PRIORS))
def test_likelihood_matches_the_sampler(prior):
    cfg = _cfg(prior)
    n = 40000
    x = _sampled(cfg, n)
    V = cfg.data.V
    codes = (x * V ** np.arange(3)).sum(1)
    freq = np.bincount(codes, minlength=V ** 3) / n
    docs = [np.array(t) for t in itertools.product(range(V), repeat=3)]
    p = np.array([np.exp(doc_log_likelihood(cfg, t[::-1])) for t in docs])  # code order
    se = np.sqrt(p * (1 - p) / n)
    assert np.all(np.abs(freq - p) < 5 * se + 1e-12), np.max(np.abs(freq - p) / (se + 1e-12))


@pytest.mark.parametrize("prior", list(PRIORS))
def test_moments_and_cooccurrence_match_the_sampler(prior):
    cfg = _cfg(prior, T=4, v=2, N=2)
    m1, m2 = topic_moments(cfg)
    th = np.asarray(jax.device_get(sample_theta(jax.random.PRNGKey(1), cfg.data, 200000)),
                    np.float64)
    emp = th.T @ th / len(th)
    se = np.sqrt(np.var(th[:, :, None] * th[:, None, :], axis=0) / len(th))
    assert np.all(np.abs(emp - m2) < 5 * se + 1e-9)
    assert np.allclose(th.mean(0), m1, atol=5 * th.std(0).max() / np.sqrt(len(th)))
    # word pairs at the two positions of 2-word documents
    x = _sampled(cfg, 100000, seed=2)
    V = cfg.data.V
    p1, p2 = word_probabilities(cfg)
    joint = np.zeros((V, V))
    np.add.at(joint, (x[:, 0], x[:, 1]), 1.0)
    joint /= len(x)
    se2 = np.sqrt(p2 * (1 - p2) / len(x))
    assert np.all(np.abs(joint - p2) < 5 * se2 + 1e-12)
    assert abs(p2.sum() - 1) < 1e-12 and np.allclose(p2.sum(1), p1)
    # disjoint uniform topics: PMI takes two values, same topic above 0 > other topic
    P = pmi(cfg)
    same = np.equal.outer(np.arange(V) // 2, np.arange(V) // 2)
    assert np.ptp(P[same]) < 1e-12 and P[same][0] > 0
    finite = P[~same][np.isfinite(P[~same])]
    assert finite.size == 0 or (np.ptp(finite) < 1e-12 and finite[0] < 0)
