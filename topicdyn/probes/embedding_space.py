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
