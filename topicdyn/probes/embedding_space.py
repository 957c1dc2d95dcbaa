"""Embedding-space probes (Singh 2023, EMBEDDING_SPACE.md §3), statistics as pure functions.

P-near (claim S4): at [MASK] queries, where the model sees only the visible words O, how well
its logits over the content words follow the exact posterior predictive log P*(w | O)
(the `bayes/visible` predictor): Pearson and Spearman correlation of the two centred vectors,
averaged over the queries. The Bayes predictor itself gives 1.
"""
from __future__ import annotations

import jax.numpy as jnp


def _pearson(a, b, ok):
    """Row-wise correlation of a, b (R, V) over the entries ok (R, V)."""
    n = jnp.maximum(jnp.sum(ok, -1, keepdims=True), 1)
    ac = jnp.where(ok, a - jnp.sum(jnp.where(ok, a, 0.0), -1, keepdims=True) / n, 0.0)
    bc = jnp.where(ok, b - jnp.sum(jnp.where(ok, b, 0.0), -1, keepdims=True) / n, 0.0)
    den = jnp.sqrt(jnp.sum(ac * ac, -1) * jnp.sum(bc * bc, -1))
    return jnp.sum(ac * bc, -1) / jnp.maximum(den, 1e-30)


def _ranks(a, ok):
    """Ranks 0.. of the entries ok of each row (others placed last, then masked out)."""
    big = jnp.where(ok, a, jnp.inf)
    return jnp.argsort(jnp.argsort(big, -1), -1).astype(a.dtype)


def near_stats(logits, ref_logp, rows, V: int) -> dict:
    """{near_pearson, near_spearman}: logits, ref_logp (R, n_vocab) per query row, rows (R,)
    bool: the rows to average ([MASK] queries). Content words with log P* = -inf (impossible
    under the posterior) are left out of a row's correlation."""
    z, r = logits[:, :V], ref_logp[:, :V]
    ok = jnp.isfinite(r)
    r = jnp.where(ok, r, 0.0)
    w = rows.astype(z.dtype)
    n = jnp.maximum(jnp.sum(w), 1.0)
    out = {"near_pearson": jnp.sum(w * _pearson(z, r, ok)) / n}
    out["near_spearman"] = jnp.sum(w * _pearson(_ranks(z, ok), _ranks(r, ok), ok)) / n
    return out


def copy_bias(logp, counts, word_topic, T: int):
    """P-copy's copy bias G(O) per context (claim S2): within each topic seen in O, the mean
    log-probability of its words present in O minus that of its words absent from O, averaged
    over the topics that have both (0 where none has). Comparing inside a topic keeps the
    topic's own share out: the Bayes predictor of disjoint uniform topics gives every word of a
    topic the same probability, hence exactly 0; G > 0 is preference for copying a seen token.

    logp (R, V) model log-probabilities over the content words, counts (R, V) the visible
    counts of each word, word_topic (V,) int. Returns (R,)."""
    onehot = (word_topic[:, None] == jnp.arange(T)[None, :]).astype(logp.dtype)  # (V, T)
    seen = (counts > 0).astype(logp.dtype)
    n_in, n_out = seen @ onehot, (1.0 - seen) @ onehot  # (R, T) words present / absent
    s_in, s_out = (logp * seen) @ onehot, (logp * (1.0 - seen)) @ onehot
    both = (n_in > 0) & (n_out > 0)
    g = jnp.where(both, s_in / jnp.maximum(n_in, 1.0) - s_out / jnp.maximum(n_out, 1.0), 0.0)
    k = jnp.sum(both, -1)
    return jnp.where(k > 0, jnp.sum(g, -1) / jnp.maximum(k, 1), 0.0)
