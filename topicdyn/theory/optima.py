"""Symmetric optima of the uniform-attention regimes V (trained W^V) and E (trained embedding).

Both models are linear maps of the key-token frequencies xbar = c / |c| (c: key counts of the
document, the same for every query of it):
    regime V: logits = xbar @ W^V               (one-hot embedding, decoder = I)
    regime E: logits = xbar @ E[:, :n_vocab]    (W^V = I, decoder = I_{d x n_vocab}, d >= n_vocab)
so they are the same function class and have the same optimum and loss plateau (E's columns
beyond n_vocab, if d > n_vocab, never reach the logits). The population loss is convex in W and
invariant under permuting topics and words inside a topic (disjoint uniform topics), so averaging
an optimum over that group gives an optimum in the block-symmetric family:

    W[w, w'] = a (w' = w), b (same topic), c (other topic)      content rows, content columns
    W[y, w'] = s_y                                               special rows y (keys only)
    W[:, y]  = special columns.

What the loss cannot see, and what is reported for it:
- cross-entropy: adding a constant to a row shifts every logit of a query by the same amount
  (xbar sums to 1), so only a - c and b - c are identified: c = 0 is the gauge and the s_y are
  invisible (0). The special columns are never targets, so the infimum has them at -inf (the
  optimum is a limit): they are excluded from the softmax and reported as -inf.
- squared loss: every block is identified except directions of collinear keys (START and END
  are always exactly once each under key_set=unselected: only their sum is identified), for
  which the minimum-Frobenius-norm solution is reported; special columns are 0 at the optimum;
  rows of tokens that are never keys (MASK, PAD under key_set=unselected) are 0 (invisible).
Gaps (same - cross, diag - same) are invariant and are the quantities to compare with training.
"""
from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from topicdyn.config import Config
from topicdyn.data import word_topic
from topicdyn.theory.cache import memoized
from topicdyn.theory.common import (describe, newton_minimize, owner_topic, ratio_se,
                                    require_symmetric, sandwich_cov)
from topicdyn.theory.population import PopulationSample, describe_sample, population

SPECIALS = ("MASK", "START", "END", "PAD")


def block_stats(M: np.ndarray, cfg: Config) -> dict[str, float]:
    """Block statistics of the content block M[:V, :V] (BRIEF §4): mean diagonal, mean same-topic
    off-diagonal, mean cross-topic, gap = same - cross, diag_minus_same, block_score (share of
    the variance of the entries explained by the three groups)."""
    V = cfg.data.V
    A = np.asarray(M, np.float64)[:V, :V]
    topic = word_topic(cfg.data)  # the model's own labelling (topic_block_matrix uses it too)
    same = topic[:, None] == topic[None, :]
    eye = np.eye(V, dtype=bool)
    groups = [eye, same & ~eye, ~same]
    means = [A[g].mean() if g.any() else np.nan for g in groups]
    fit = sum(np.where(g, m, 0.0) for g, m in zip(groups, means) if g.any())
    tot = ((A - A.mean()) ** 2).sum()
    score = 1.0 - ((A - fit) ** 2).sum() / tot if tot > 0 else 1.0
    return {"diag": means[0], "same": means[1], "cross": means[2],
            "gap": means[1] - means[2], "diag_minus_same": means[0] - means[1],
            "block_score": float(score)}


def _features(sample: PopulationSample, cfg: Config, loss: str):
    """Family features F (D, V, P), weighted targets y (D, V), names and Frobenius norms (P,)."""
    d = cfg.data
    V = d.V
    v = V // d.T  # words per topic (equal sizes: require_symmetric)
    tot = sample.key_counts.sum(1, keepdims=True)
    xbar = sample.key_counts / np.maximum(tot, 1e-300)
    xc = xbar[:, :V]
    topic = owner_topic(cfg)
    Xt = (xc @ (topic[:, None] == topic[None, :]).astype(np.float64))  # (D, V) own-topic mass
    feats = [xc, Xt - xc]
    names = ["a", "b"]
    norms = [np.sqrt(V), np.sqrt(V * (v - 1))]
    if loss == "squared":
        feats.append(xc.sum(1, keepdims=True) - Xt)
        names.append("c")
        norms.append(np.sqrt(V * (V - v)))
        for i, s in enumerate(SPECIALS):
            feats.append(np.repeat(xbar[:, V + i:V + i + 1], V, 1))
            names.append(f"s_{s}")
            norms.append(np.sqrt(V))
    F = np.stack(feats, -1)
    y = np.zeros((sample.n_docs, V))
    np.add.at(y, (sample.q_doc, sample.q_target), sample.q_weight)
    return F, y, names, np.maximum(np.array(norms), 1e-12)


def _per_doc_ce(theta, data):
    F, y = data
    z = F @ theta
    return jnp.sum(y, -1) * jax.nn.logsumexp(z, -1) - jnp.sum(y * z, -1)


def _per_doc_sq(theta, data):
    F, y = data
    z = F @ theta
    return jnp.sum(y, -1) * (jnp.sum(z * z, -1) + 1.0) - 2.0 * jnp.sum(y * z, -1)


@dataclass(frozen=True)
class LinearOptimum:
    """Symmetric optimum of regime V or E."""

    regime: str  # "V" or "E"
    loss: str  # "ce" or "squared"
    params: dict  # block values in the stated gauge: a, b, c (+ s_MASK.. under squared)
    param_se: dict  # Monte Carlo standard errors (0 for enumeration; nan if not identified)
    gaps: dict  # same_minus_cross = b - c, diag_minus_same = a - b (gauge invariant)
    gap_se: dict
    plateau: float  # predicted loss at the optimum
    plateau_se: float
    matrix: np.ndarray  # (n_vocab, n_vocab) W^V (or (n_vocab, d) E) at the optimum
    gram: dict | None  # regime E: block statistics of the Gram matrix of the content rows
    assumptions: dict


def linear_loss(W: np.ndarray, sample: PopulationSample, cfg: Config, loss: str
                ) -> tuple[float, float]:
    """Population loss (mean, s.e.) of logits = xbar @ W[:, :n_vocab] for any W (n_vocab, >=nv).
    -inf entries are evaluated as -1e4 (their softmax weight underflows to 0)."""
    nv = cfg.data.n_vocab
    W = np.where(np.isneginf(W), -1e4, np.asarray(W, np.float64))[:, :nv]
    xbar = sample.key_counts / np.maximum(sample.key_counts.sum(1, keepdims=True), 1e-300)
    z = xbar @ W  # (D, nv)
    y = np.zeros((sample.n_docs, nv))
    np.add.at(y, (sample.q_doc, sample.q_target), sample.q_weight)
    n = y.sum(1)
    if loss == "ce":
        mx = z.max(1, keepdims=True)
        lse = mx[:, 0] + np.log(np.exp(z - mx).sum(1))
        per = n * lse - (y * z).sum(1)
    else:
        per = n * ((z ** 2).sum(1) + 1) - 2 * (y * z).sum(1)
    mean, se = ratio_se(per, n)
    return mean, (0.0 if sample.estimator == "enumeration" else se)


def _assemble(cfg: Config, loss: str, p: dict) -> np.ndarray:
    d = cfg.data
    V, nv = d.V, d.n_vocab
    topic = owner_topic(cfg)
    same = topic[:, None] == topic[None, :]
    W = np.zeros((nv, nv))
    W[:V, :V] = np.where(same, p["b"], p["c"])
    W[np.arange(V), np.arange(V)] = p["a"]
    if loss == "ce":
        W[:, V:] = -np.inf
    else:
        for i, s in enumerate(SPECIALS):
            W[V + i, :V] = p[f"s_{s}"]
    return W


@memoized(("data", "mask", "model"))
def symmetric_optimum_V(cfg: Config, *, loss: str | None = None,
                        sample: PopulationSample | None = None, estimator: str = "auto",
                        n_docs: int = 20000, seed: int = 0, regime: str = "V") -> LinearOptimum:
    """Optimum of regime V's population loss inside the block-symmetric family.

    loss: "ce" | "squared" (default cfg.model.loss). sample: a PopulationSample to use (default:
    `population(cfg, estimator, n_docs, seed)`: exact enumeration for tiny configs, else Monte
    Carlo). CE is minimised by full-batch damped Newton over (a, b) with c = 0; squared loss is
    solved exactly (normal equations, minimum Frobenius norm).
    """
    require_symmetric(cfg, f"regime {regime}")
    loss = loss or cfg.model.loss
    if sample is None:
        sample = population(cfg, estimator, n_docs, seed)
    F, y, names, norms = _features(sample, cfg, loss)
    n_w = y.sum()
    if loss == "ce":
        data = (jnp.asarray(F, jnp.float32), jnp.asarray(y, jnp.float32))
        fun = lambda th, dt: jnp.sum(_per_doc_ce(th, dt)) / n_w
        theta, _, iters = newton_minimize(fun, np.zeros(2), data)
        per_doc, solver = _per_doc_ce, f"full-batch damped Newton over (a, b), {iters} iterations"
        theta = np.asarray(theta)
    else:
        Fs = F / norms
        G = np.einsum("d,dvp,dvq->pq", y.sum(1), Fs, Fs, optimize=True)
        h = np.einsum("dvp,dv->p", Fs, y, optimize=True)
        theta = (np.linalg.pinv(G, rcond=1e-10) @ h) / norms
        data = (jnp.asarray(F, jnp.float32), jnp.asarray(y, jnp.float32))
        per_doc, solver = _per_doc_sq, "exact least squares (minimum Frobenius norm)"
    z = F @ theta  # float64 evaluation of the optimum's loss
    if loss == "ce":
        mx = z.max(-1, keepdims=True)
        per = y.sum(1) * (mx[:, 0] + np.log(np.exp(z - mx).sum(-1))) - (y * z).sum(1)
    else:
        per = y.sum(1) * ((z ** 2).sum(1) + 1) - 2 * (y * z).sum(1)
    plateau, plateau_se = ratio_se(per, y.sum(1))
    P = len(names)
    if sample.estimator == "monte_carlo":
        if loss == "ce":
            cov = sandwich_cov(per_doc, theta, data, float(n_w))
        else:  # in Frobenius-orthonormal coordinates, the gauge of the reported solution
            data_s = (jnp.asarray(F / norms, jnp.float32), data[1])
            cov = sandwich_cov(per_doc, theta * norms, data_s, float(n_w)) / np.outer(norms,
                                                                                        norms)
    else:
        cov, plateau_se = np.zeros((P, P)), 0.0
    p = dict(zip(names, map(float, theta)))
    pse = dict(zip(names, map(float, np.sqrt(np.clip(np.diag(cov), 0, None)))))
    if loss == "ce":
        p["c"], pse["c"] = 0.0, 0.0
        for s in SPECIALS:
            p[f"s_{s}"], pse[f"s_{s}"] = 0.0, 0.0
    gaps = {"same_minus_cross": p["b"] - p["c"], "diag_minus_same": p["a"] - p["b"]}

    def contrast_se(plus: str, minus: str) -> float:
        g = np.zeros(P)
        for name, sign in ((plus, 1.0), (minus, -1.0)):
            if name in names:
                g[names.index(name)] += sign
        return float(np.sqrt(max(g @ cov @ g, 0.0)))

    gap_se = {"same_minus_cross": contrast_se("b", "c"), "diag_minus_same": contrast_se("a", "b")}
    W = _assemble(cfg, loss, p)
    gauge = ("CE gauge: c = 0, special rows 0 (loss-invisible row constants), special columns "
             "-inf (never targets: the infimum is a limit)" if loss == "ce" else
             "squared: minimum Frobenius norm; special columns 0; never-key rows 0")
    notes = {"family": "block-symmetric W (diag a, same-topic b, cross-topic c, special rows s_y)",
             "gauge": gauge, "solver": solver, "loss": loss,
             "regime": regime + (" (same function class as regime V: logits = xbar @ E)"
                                 if regime == "E" else "")}
    return LinearOptimum(regime, loss, p, pse, gaps, gap_se, plateau, plateau_se, W, None,
                         describe(cfg, describe_sample(sample), **notes))


def symmetric_optimum_E(cfg: Config, **kw) -> LinearOptimum:
    """Regime E: the regime-V optimum read as the embedding E (n_vocab, d), plus the block
    statistics of its Gram matrix E E^T over content rows (CE: rows centred over the content
    columns and the diverging special columns left out; Gram gaps are invariant to adding a
    common symmetric vector to all rows)."""
    opt = symmetric_optimum_V(cfg, regime="E", **kw)
    nv, d, V = cfg.data.n_vocab, cfg.d_model, cfg.data.V
    E = np.zeros((nv, d))
    E[:, :nv] = opt.matrix
    if opt.loss == "ce":
        Ec = E[:V, :V] - E[:V, :V].mean(1, keepdims=True)
    else:
        Ec = E[:V]
    gram = block_stats(Ec @ Ec.T, cfg)
    return LinearOptimum("E", opt.loss, opt.params, opt.param_se, opt.gaps, opt.gap_se,
                         opt.plateau, opt.plateau_se, E, gram, opt.assumptions)
