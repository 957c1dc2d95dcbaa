"""Posterior mean of the topic proportions theta given the visible words of a document.

Observation model. A visible key that shows content word s has likelihood q [s == w] + r given
its true word w (`observation_noise`): under key_set="unselected" keys are unselected positions,
which show their own word (q = 1, r = 0); under key_set="all" a key may also be a selected
position showing a random word, so q = 1 - p_mask + p_mask p_keep and r = p_mask p_random / |R|
(|R| = number of ids a random replacement draws from). Shown [MASK], START, END and PAD tokens
carry no information about theta. Given theta, visible words are independent, so

    P(obs | theta) = prod_j (q phi_theta(s_j) + r),   phi_theta = theta @ beta.

Estimators, chosen by `topic_posterior` (method string says which):
- "closed form": Dirichlet prior, disjoint topic supports, clean observations (r = 0): the
  posterior is Dirichlet(alpha + m), m_t the visible words of topic t, mean (alpha+m)/(T alpha+n).
  The k-topics prior with Dirichlet weights has the analogous subset-averaged closed form.
- "exact DP": disjoint supports and r > 0. Expanding the product gives a mixture of Dirichlets
  over k_t = number of topic-t observations that are real; a log-space polynomial product over
  topics sums it exactly (cost ~ n^2 per active topic).
- "exact subsets": k-topics prior with equal weights (theta takes C(T, k) values), any beta.
- "importance sampling": anything else (overlapping topics): self-normalised importance sampling
  from a defensive mixture of Dirichlet proposals (EM fit, a wider one, the prior); returns the
  delta-method covariance of the estimate as a (T, T) matrix K of the topic mean: the word
  predictive is linear in theta (phi_theta = theta @ beta), so its covariance is exactly
  beta^T K beta, formed only for the entries asked for (a V x V matrix per context would cost
  n_theta V^2 work, hours for an LDA-fitted twin of a real vocabulary).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from topicdyn.config import Config
from topicdyn.theory.common import beta_matrix, n_random_ids, owner_topic

_lgamma = np.vectorize(math.lgamma, otypes=[float])


def observation_noise(cfg: Config) -> tuple[float, float]:
    """(q, r): a key showing content word s has likelihood q [s == w] + r given its true word w."""
    m = cfg.mask
    if m.key_set == "unselected":
        return 1.0, 0.0
    return 1 - m.p_mask + m.p_mask * m.p_keep, m.p_mask * m.p_replace_random / n_random_ids(cfg)


def topic_subsets(T: int, k: int, limit: int = 200_000) -> np.ndarray:
    """(C(T, k), T) bool: every k-subset of the topics."""
    if math.comb(T, k) > limit:
        raise ValueError(f"C({T}, {k}) = {math.comb(T, k)} topic subsets is too many to enumerate")
    out = np.zeros((math.comb(T, k), T), bool)
    for i, s in enumerate(itertools.combinations(range(T), k)):
        out[i, list(s)] = True
    return out


def _dirichlet_log_moment(k: np.ndarray, alpha: float, K: int) -> np.ndarray:
    """log E[prod theta^k] for theta ~ Dirichlet(alpha 1_K); k (..., K) counts."""
    tot = k.sum(-1)
    return (np.sum(_lgamma(alpha + k) - math.lgamma(alpha), -1)
            + math.lgamma(K * alpha) - _lgamma(K * alpha + tot))


def prior_moment(cfg: Config, k: np.ndarray) -> np.ndarray:
    """E[prod_t theta_t^{k_t}] (...,) under the config's prior; k (..., T) non-negative ints."""
    d = cfg.data
    k = np.asarray(k, np.float64)
    if d.prior == "dirichlet":
        return np.exp(_dirichlet_log_moment(k, d.alpha, d.T))
    subs = topic_subsets(d.T, d.k)
    out = np.zeros(k.shape[:-1])
    for S in subs:
        ok = k[..., ~S].sum(-1) == 0
        kin = k[..., S]
        if d.k_weights == "equal":
            val = np.exp(-kin.sum(-1) * math.log(d.k))
        else:
            val = np.exp(_dirichlet_log_moment(kin, d.alpha, d.k))
        out += np.where(ok, val, 0.0)
    return out / len(subs)


@dataclass(frozen=True)
class TopicPosterior:
    """Posterior of theta for M observation count vectors."""

    mean: np.ndarray  # (M, T) E[theta | obs]
    word: np.ndarray  # (M, V) E[phi_theta(w) | obs] = mean @ beta: the context predictive
    mean_cov: np.ndarray | None  # (M, T, T) Monte Carlo covariance of `mean` (None: exact)
    method: str
    beta: np.ndarray | None = None  # (T, V) the topic-word matrix (with mean_cov)

    @property
    def word_se(self) -> np.ndarray | None:
        """(M, V) Monte Carlo s.e. of `word` (None: exact): sqrt(diag(beta^T K beta))."""
        if self.mean_cov is None:
            return None
        var = np.einsum("tv,mts,sv->mv", self.beta, self.mean_cov, self.beta)
        return np.sqrt(np.clip(var, 0.0, None))

    def word_cov(self, rows: np.ndarray) -> np.ndarray | None:
        """(n, V, V) Monte Carlo covariance of `word` for the given rows (None: exact)."""
        if self.mean_cov is None:
            return None
        K = self.mean_cov[np.asarray(rows)]
        return np.einsum("tv,nts,su->nvu", self.beta, K, self.beta)


def _logsumexp(x: np.ndarray, axis=None) -> np.ndarray:
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        return np.squeeze(m + np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)), axis=axis)


def _logconv(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Log-coefficients of the product of two polynomials given by log-coefficients (exact:
    a per-output maximum is taken out, so no term is lost to a global rescaling)."""
    na, nb = len(a), len(b)
    P = np.full((na, na + nb - 1), -np.inf)
    rows = np.repeat(np.arange(na), nb)
    cols = (np.arange(na)[:, None] + np.arange(nb)[None, :]).reshape(-1)
    P[rows, cols] = (a[:, None] + b[None, :]).reshape(-1)
    return _logsumexp(P, axis=0)


def _binomial_logpoly(m: int, log_qb: float, log_r: float) -> np.ndarray:
    """Log-coefficients of (qb x + r)^m, powers 0..m."""
    k = np.arange(m + 1)
    lc = math.lgamma(m + 1) - _lgamma(k + 1) - _lgamma(m - k + 1)
    with np.errstate(invalid="ignore"):
        noise = np.where(m - k > 0, (m - k) * log_r, 0.0)
    return lc + k * log_qb + noise


def _topic_logpolys(counts: np.ndarray, own: np.ndarray, beta: np.ndarray, q: float,
                    r: float) -> dict[int, np.ndarray]:
    """{active topic t: log-coefficients of prod_{obs j of topic t} (q beta_t(s_j) x + r)}."""
    log_r = math.log(r) if r > 0 else -np.inf
    out = {}
    for t in np.unique(own[(counts > 0) & (own >= 0)]):
        words = np.nonzero((counts > 0) & (own == t))[0]
        groups: dict[float, int] = {}
        for w in words:  # words with equal beta give one binomial
            key = round(float(beta[t, w]), 14)
            groups[key] = groups.get(key, 0) + int(counts[w])
        poly = np.zeros(1)
        for b, m in groups.items():
            poly = _logconv(poly, _binomial_logpoly(m, math.log(q * b), log_r))
        out[int(t)] = poly
    return out


def _dirichlet_dp(polys: list[np.ndarray], n_inactive: int, alpha: float
                  ) -> tuple[float, np.ndarray, float]:
    """Mixture-of-Dirichlets evidence and posterior means over K = len(polys) + n_inactive
    topics with prior Dirichlet(alpha 1_K); polys[i][k] = log weight of k real observations of
    active topic i. Returns (log Z, means of the active topics, mean of each inactive topic)."""
    K = len(polys) + n_inactive
    tilde = [p + _lgamma(alpha + np.arange(len(p))) - math.lgamma(alpha) for p in polys]
    plus = [t + np.log(alpha + np.arange(len(t))) for t in tilde]
    pre = [np.zeros(1)]
    for t in tilde:
        pre.append(_logconv(pre[-1], t))
    suf = [np.zeros(1)]
    for t in reversed(tilde):
        suf.append(_logconv(suf[-1], t))
    suf = suf[::-1]  # suf[i] = product of tilde[i:]
    A = pre[-1]
    n = np.arange(len(A))
    G = math.lgamma(K * alpha) - _lgamma(K * alpha + n)
    Gp = G - np.log(K * alpha + n)  # E[theta_t ...] raises the total by one
    logZ = float(_logsumexp(A + G))
    means = np.empty(len(polys))
    for i in range(len(polys)):
        Ai = _logconv(plus[i], _logconv(pre[i], suf[i + 1]))
        means[i] = math.exp(_logsumexp(Ai + Gp[:len(Ai)]) - logZ)
    inactive = math.exp(math.log(alpha) + _logsumexp(A + Gp) - logZ)
    return logZ, means, inactive


def _dp_posterior(counts: np.ndarray, cfg: Config, own: np.ndarray, q: float, r: float
                  ) -> np.ndarray:
    """(T,) exact posterior mean for disjoint supports (Dirichlet or k-topics-Dirichlet prior)."""
    d, beta = cfg.data, beta_matrix(cfg)
    polys = _topic_logpolys(counts, own, beta, q, r)
    act = sorted(polys)
    mean = np.zeros(d.T)
    if d.prior == "dirichlet":
        _, m_act, m_in = _dirichlet_dp([polys[t] for t in act], d.T - len(act), d.alpha)
        mean[:] = m_in
        mean[act] = m_act
        return mean
    subs = topic_subsets(d.T, d.k)
    logZ, means = np.empty(len(subs)), np.zeros((len(subs), d.T))
    for i, S in enumerate(subs):
        ins = [t for t in act if S[t]]
        outside = sum(float(polys[t][0]) for t in act if not S[t])  # only noise explains them
        lz, m_act, m_in = _dirichlet_dp([polys[t] for t in ins], d.k - len(ins), d.alpha)
        logZ[i] = lz + outside
        means[i, S] = m_in
        means[i, ins] = m_act
    w = np.exp(logZ - _logsumexp(logZ))
    return w @ means


def _closed_form(counts: np.ndarray, cfg: Config, own: np.ndarray) -> np.ndarray:
    """(M, T) posterior means for clean observations and disjoint supports."""
    d = cfg.data
    m = np.zeros((len(counts), d.T))
    for t in range(d.T):
        m[:, t] = counts[:, own == t].sum(1)
    n = m.sum(1, keepdims=True)
    if d.prior == "dirichlet":
        return (d.alpha + m) / (d.T * d.alpha + n)
    a = (m > 0).sum(1, keepdims=True)
    base = d.alpha / (d.k * d.alpha + n)
    # every k-subset containing the observed topics is equally likely a posteriori
    frac = np.where(d.T > a, np.clip(d.k - a, 0, None) / np.maximum(d.T - a, 1), 0.0)
    return np.where(m > 0, (d.alpha + m) / (d.k * d.alpha + n), frac * base)


def _equal_subsets(counts: np.ndarray, cfg: Config, q: float, r: float) -> np.ndarray:
    """(M, T) exact means for the k-topics prior with equal weights (theta = 1_S / k)."""
    d, beta = cfg.data, beta_matrix(cfg)
    subs = topic_subsets(d.T, d.k).astype(np.float64) / d.k
    with np.errstate(divide="ignore"):
        logp = np.log(q * (subs @ beta) + r)  # (nS, V)
    logp = np.maximum(logp, -1e300)  # impossible words: finite, so 0 * logp stays 0
    ll = (counts[:, None, :] * logp[None]).sum(-1)
    w = np.exp(ll - _logsumexp(ll, axis=1)[:, None])
    return w @ subs


def _log_dirichlet(log_theta: np.ndarray, a: np.ndarray) -> np.ndarray:
    return math.lgamma(a.sum()) - _lgamma(a).sum() + log_theta @ (a - 1)


def _sample_log_dirichlet(rng, a: np.ndarray, n: int) -> np.ndarray:
    """(n, K) log theta ~ Dirichlet(a), via Gamma(a+1) U^(1/a) so tiny alpha never gives log 0."""
    g = np.log(rng.gamma(a + 1, size=(n, len(a)))) + np.log(rng.uniform(size=(n, len(a)))) / a
    return g - _logsumexp(g, axis=1)[:, None]


def _importance(counts: np.ndarray, cfg: Config, q: float, r: float, n: int, rng
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Self-normalised importance sampling for one row: (mean (T,), word (V,), mean_cov (T, T))
    with the delta-method covariance sum_s w_s^2 (theta_s - mean)(theta_s - mean)^T (that of
    `word` is beta^T mean_cov beta)."""
    d, beta = cfg.data, beta_matrix(cfg)
    subs = np.ones((1, d.T), bool) if d.prior == "dirichlet" else topic_subsets(d.T, d.k)
    obs = counts > 0
    c, B = counts[obs], beta[:, obs]
    thetas, logw = [], []
    for S in subs:
        idx = np.nonzero(S)[0]
        a0 = np.full(len(idx), d.alpha)
        pi = np.full(len(idx), 1.0 / len(idx))
        for _ in range(200):  # EM fixed point for the expected real counts per topic
            resp = q * pi[:, None] * B[idx] / (q * (pi @ B[idx]) + r)[None]
            chat = resp @ c
            pi = (a0 + chat) / (a0 + chat).sum()
        # defensive mixture: the fitted Dirichlet, one twice as wide, and the prior itself
        # (prior / proposal <= 3 bounds the weights: a posterior with alpha < 1 keeps the
        # prior's singular edges, which a fitted Dirichlet alone would undersample)
        props = [a0 + chat, a0 + 0.5 * chat, a0]
        lt = np.concatenate([_sample_log_dirichlet(rng, p, n // 3) for p in props])
        lq = _logsumexp(np.stack([_log_dirichlet(lt, p) for p in props]), axis=0) - math.log(3)
        th = np.exp(lt)
        with np.errstate(divide="ignore"):
            ll = np.log(q * (th @ B[idx]) + r) @ c
        full = np.zeros((len(th), d.T))
        full[:, idx] = th
        thetas.append(full)
        logw.append(_log_dirichlet(lt, a0) - lq + ll)
    th, lw = np.concatenate(thetas), np.concatenate(logw)
    w = np.exp(lw - _logsumexp(lw))
    mean = w @ th
    dev = w[:, None] * (th - mean)
    return mean, mean @ beta, dev.T @ dev


def topic_posterior(cfg: Config, counts: np.ndarray, q: float | None = None,
                    r: float | None = None, *, n_theta: int = 4096, seed: int = 0
                    ) -> TopicPosterior:
    """Posterior of theta for each row of counts (M, V) of visible content words.

    q, r: observation model (default: `observation_noise(cfg)`). n_theta, seed: importance
    sampling only. Duplicate rows are computed once.
    """
    if q is None or r is None:
        q, r = observation_noise(cfg)
    d, beta, own = cfg.data, beta_matrix(cfg), owner_topic(cfg)
    counts = np.asarray(counts, np.float64)
    uniq, inv = np.unique(counts, axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    if own is not None and r == 0 and not (d.prior == "k_topics" and d.k_weights == "equal"):
        mean, method = _closed_form(uniq, cfg, own), "closed form"
    elif d.prior == "k_topics" and d.k_weights == "equal":
        mean, method = _equal_subsets(uniq, cfg, q, r), "exact subsets"
    elif own is not None:
        mean = np.stack([_dp_posterior(c, cfg, own, q, r) for c in uniq])
        method = "exact DP"
    else:
        rng = np.random.default_rng(seed)
        res = [_importance(c, cfg, q, r, n_theta, rng) for c in uniq]
        mean = np.stack([x[0] for x in res])
        method = f"importance sampling ({n_theta} theta draws per context)"
        return TopicPosterior(mean[inv], np.stack([x[1] for x in res])[inv],
                              np.stack([x[2] for x in res])[inv], method, beta)
    return TopicPosterior(mean[inv], mean[inv] @ beta, None, method)
