"""Exact references of the generator itself: topic moments, word co-occurrence and PMI, and the
exact log-likelihood of a document (EMBEDDING_SPACE.md §2).

Disjoint topics (each word owned by one topic), priors:
- dirichlet(alpha): E[theta_s theta_t] = alpha (alpha + [s=t]) / (T alpha (T alpha + 1)), and
  log P(x) = log G(T a) - log G(T a + N) + sum_t [log G(a + n_t) - log G(a)] + sum_j log beta;
- k_topics: a uniform subset S of k topics, then weights Dirichlet(alpha) over S (or 1/k each,
  k_weights=equal). Every subset holding the m topics of x gives x the same probability, and
  C(T - m, k - m) of the C(T, k) subsets hold them.
The moments need no disjointness; the likelihood does (NotImplementedError otherwise).
"""
from __future__ import annotations

import math

import numpy as np

from topicdyn.config import Config
from topicdyn.theory.common import beta_matrix, owner_topic


def _weight_moments(d, k: int) -> tuple[float, float]:
    """(E[w_i^2], E[w_i w_j], i != j) of the weights over k topics."""
    if d.prior == "k_topics" and d.k_weights == "equal":
        return 1.0 / k ** 2, 1.0 / k ** 2
    a = d.alpha
    return a * (a + 1) / (k * a * (k * a + 1)), a * a / (k * a * (k * a + 1))


def topic_moments(cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    """(E[theta] (T,), E[theta theta^T] (T, T)) under the configured prior."""
    d = cfg.data
    T = d.T
    m1 = np.full(T, 1.0 / T)
    if d.prior == "dirichlet":
        sq, cross = _weight_moments(d, T)
        both_in = np.ones((T, T))
    else:
        k = d.k
        sq, cross = _weight_moments(d, k)
        # P(s in S) = k / T; P(s, t in S) = k (k - 1) / (T (T - 1)) for s != t
        both_in = np.full((T, T), k * (k - 1) / (T * (T - 1)) if T > 1 else 1.0)
        np.fill_diagonal(both_in, k / T)
    m2 = both_in * np.where(np.eye(T, dtype=bool), sq, cross)
    return m1, m2


def word_probabilities(cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    """(P(w) (V,), P(w at one position, w' at another) (V, V)) of one document."""
    beta = beta_matrix(cfg)
    m1, m2 = topic_moments(cfg)
    return m1 @ beta, beta.T @ m2 @ beta


def pmi(cfg: Config) -> np.ndarray:
    """(V, V) pointwise mutual information log P(w, w') / (P(w) P(w')) of two positions of one
    document (-inf where the pair never co-occurs)."""
    p1, p2 = word_probabilities(cfg)
    with np.errstate(divide="ignore"):
        return np.log(p2) - np.log(p1)[:, None] - np.log(p1)[None, :]


def doc_log_likelihood(cfg: Config, words) -> float:
    """Exact log P(x) of one document's content words (any order; exchangeable), disjoint
    topics."""
    own = owner_topic(cfg)
    if own is None or (own[np.asarray(words)] < 0).any():
        raise NotImplementedError("doc_log_likelihood: needs disjoint topic supports")
    d = cfg.data
    x = np.asarray(words, dtype=int)
    beta = beta_matrix(cfg)
    t = own[x]
    N = len(x)
    emit = float(np.sum(np.log(beta[t, x])))
    n = np.bincount(t, minlength=d.T)
    a = d.alpha
    lg = math.lgamma

    def dirmult(K: int) -> float:  # topic sequence under Dirichlet(a) over K topics
        return lg(K * a) - lg(K * a + N) + sum(lg(a + c) - lg(a) for c in n if c)

    if d.prior == "dirichlet":
        return dirmult(d.T) + emit
    m, k = int(np.count_nonzero(n)), d.k
    if m > k:
        return -math.inf
    log_share = math.log(math.comb(d.T - m, k - m)) - math.log(math.comb(d.T, k))
    seq = -N * math.log(k) if d.k_weights == "equal" else dirmult(k)
    return log_share + seq + emit
