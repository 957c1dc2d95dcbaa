"""Reusable pieces of the linen models: initialisers, the attention layer, positional tables,
the per-query key mask.

Row-vector convention: h_i = E[x_i] (d,), q = h W^Q, k = h W^K, v = h W^V, so
s_ij = <q_i, k_j> / sqrt(d_head) and the bilinear score matrix in input space is W^Q W^K^T
(= the paper's W^K^T W^Q in its column convention).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

NEG_INF = -1e30


def normal(std):
    return nn.initializers.normal(std) if std > 0 else nn.initializers.zeros


def const(value):
    return lambda key, shape, dtype=jnp.float32: jnp.asarray(value, dtype).reshape(shape)


def merge_heads(x):
    """(B, H, L, e) -> (B, L, H*e): concatenate heads."""
    B, H, L, e = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, L, H * e)


def query_key_mask(key_mask: jax.Array, objective: str) -> jax.Array:
    """(B, Lq, Lk) keys each query may attend to: the document's key set (B, L), and for the
    causal objective only positions at or before the query (a prefix)."""
    B, L = key_mask.shape
    keys = jnp.broadcast_to(key_mask[:, None, :], (B, L, L))
    if objective == "causal":
        keys = keys & jnp.tril(jnp.ones((L, L), bool))[None]
    elif objective != "mlm":
        raise ValueError(f"unknown objective {objective!r}")
    return keys


def sinusoidal_table(L: int, d: int) -> np.ndarray:
    """(L, d) fixed sinusoidal positions (Vaswani et al.): sin on even, cos on odd columns."""
    pos = np.arange(L, dtype=np.float64)[:, None]
    i = np.arange(d)[None, :]
    angle = pos / np.power(10000.0, (2 * (i // 2)) / max(d, 1))
    return np.where(i % 2 == 0, np.sin(angle), np.cos(angle)).astype(np.float32)


def softmax_attention(scores: jax.Array, keys: jax.Array) -> jax.Array:
    """Softmax over allowed keys; a query with no key at all gets zero attention (a bare softmax
    would spread it over PAD and selected positions). scores (B, H, Lq, Lk), keys broadcastable."""
    return jnp.where(keys, jax.nn.softmax(jnp.where(keys, scores, NEG_INF), axis=-1), 0.0)


def attention_layer(mod: nn.Module, h, keys, *, H: int, suffix: str, value_init, qk_init,
                    bias: bool = False, bias_init=None, qk_bias_init=None,
                    mean_pool: bool = False, tag: str = ""):
    """One attention layer inside `mod`'s compact scope (params WQ{suffix}, WK{suffix},
    WV{suffix}, each (H, d, dh), plus bQ/bK/bV (H, dh) when bias). Returns the merged-head
    context (B, L, H dh) and sows "values{tag}", "scores{tag}", "attention{tag}".

    keys: (B, Lq, Lk) bool allowed keys per query. mean_pool: no W^Q/W^K, uniform attention over
    the allowed keys."""
    d = h.shape[-1]
    dh = d // H
    WV = mod.param(f"WV{suffix}", value_init, (H, d, dh))
    vals = jnp.einsum("bld,hde->bhle", h, WV)
    if bias:
        vals = vals + mod.param(f"bV{suffix}", bias_init, (H, dh))[None, :, None, :]
    mod.sow("intermediates", f"values{tag}", merge_heads(vals))
    k4 = keys[:, None]  # (B, 1, Lq, Lk)
    if mean_pool:
        w = k4.astype(h.dtype)
        attn = jnp.broadcast_to(w / jnp.maximum(w.sum(-1, keepdims=True), 1.0),
                                (h.shape[0], H) + keys.shape[1:])
    else:
        WQ = mod.param(f"WQ{suffix}", qk_init("query"), (H, d, dh))
        WK = mod.param(f"WK{suffix}", qk_init("key"), (H, d, dh))
        q = jnp.einsum("bld,hde->bhle", h, WQ)
        k = jnp.einsum("bld,hde->bhle", h, WK)
        if bias:
            qb = bias_init if qk_bias_init is None else qk_bias_init
            q = q + mod.param(f"bQ{suffix}", qb, (H, dh))[None, :, None, :]
            k = k + mod.param(f"bK{suffix}", qb, (H, dh))[None, :, None, :]
        scores = jnp.einsum("bhie,bhje->bhij", q, k) / np.sqrt(dh)
        mod.sow("intermediates", f"scores{tag}", scores)
        attn = softmax_attention(scores, k4)
    mod.sow("intermediates", f"attention{tag}", attn)
    return merge_heads(jnp.einsum("bhij,bhje->bhie", attn, vals))
