"""On-device LDA document sampler (BRIEF §2).

`sample_documents(key, cfg)` is pure and jittable: the batch at training step t is a function of
(seed, t) only. Layout of a row (start_end=True): [START, w_1 .. w_N, END, PAD ...], length
N_max + 2. Token ids: content words 0..V-1, then [MASK], START, END, PAD (see DataConfig).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from topicdyn.config import DataConfig


class Documents(NamedTuple):
    """A batch of clean documents with their ground truth. B = batch, L = seq_len, T = topics."""

    tokens: jax.Array  # (B, L) int32
    valid: jax.Array  # (B, L) bool: not PAD
    content: jax.Array  # (B, L) bool: a content word (not START/END/PAD)
    topics: jax.Array  # (B, L) int32: topic that generated the word, -1 elsewhere
    theta: jax.Array  # (B, T) float32: the document's topic proportions
    length: jax.Array  # (B,) int32: number of content words N


def topic_word_matrix(cfg: DataConfig) -> np.ndarray:
    """beta, shape (T, V): row t is the word distribution of topic t (float64, numpy)."""
    T, v, V = cfg.T, cfg.v, cfg.V
    beta = np.zeros((T, V))
    if cfg.topic_words == "explicit":
        beta = np.asarray(cfg.beta, dtype=np.float64)
        return beta / beta.sum(1, keepdims=True)
    if cfg.topic_words == "overlap":
        step = v - cfg.overlap
        for t in range(T):
            beta[t, t * step: t * step + v] = 1.0 / v
        return beta
    w = np.ones(v) if cfg.topic_words == "disjoint" else 1.0 / np.arange(1, v + 1) ** cfg.zipf_s
    for t in range(T):
        beta[t, t * v:(t + 1) * v] = w / w.sum()
    return beta


def word_topic(cfg: DataConfig) -> np.ndarray:
    """(V,) int: the topic that owns each word (for overlapping topics: the first one)."""
    return np.argmax(topic_word_matrix(cfg) > 0, axis=0)


def _categorical_icdf(u: jax.Array, cdf: jax.Array) -> jax.Array:
    """Inverse-CDF draw: u (...,) in [0,1), cdf (..., K) increasing -> index in [0, K)."""
    u = u * cdf[..., -1]  # rescale so float32 round-off in cdf[-1] can never overflow the range
    idx = jnp.sum((u[..., None] >= cdf).astype(jnp.int32), axis=-1)
    return jnp.minimum(idx, cdf.shape[-1] - 1)


def _uniform_int(u: jax.Array, n: int) -> jax.Array:
    """Map u in [0, 1) to a uniform integer in [0, n)."""
    return jnp.minimum(jnp.floor(u * n).astype(jnp.int32), n - 1)


def sample_theta(key: jax.Array, cfg: DataConfig, batch: int) -> jax.Array:
    """(batch, T) topic proportions from the configured prior."""
    T = cfg.T
    if cfg.prior == "dirichlet":
        return jax.random.dirichlet(key, jnp.full((T,), cfg.alpha, jnp.float32), (batch,))
    k_sub, k_w = jax.random.split(key)
    # uniform random subset of size k: the k smallest of T iid uniforms
    ranks = jnp.argsort(jnp.argsort(jax.random.uniform(k_sub, (batch, T)), axis=1), axis=1)
    chosen = ranks < cfg.k
    if cfg.k_weights == "equal":
        w = jnp.full((batch, cfg.k), 1.0 / cfg.k)
    else:
        w = jax.random.dirichlet(k_w, jnp.full((cfg.k,), cfg.alpha, jnp.float32), (batch,))
    # place the k weights on the chosen topics in rank order
    slot = jnp.where(chosen, ranks, 0)
    return jnp.where(chosen, jnp.take_along_axis(w, slot, axis=1), 0.0)


def sample_documents(key: jax.Array, cfg: DataConfig, batch: int | None = None) -> Documents:
    """Sample `batch` (default cfg.batch_size) LDA documents; see module doc for the layout."""
    B = cfg.batch_size if batch is None else batch
    k_theta, k_u = jax.random.split(key)
    theta = sample_theta(k_theta, cfg, B)
    n = cfg.N_max
    # one uniform draw feeds every per-token choice: each jax.random call adds ~1 s of CPU
    # compile time, and integers come from floor(u * range) (bias ~range/2^24, negligible)
    u = jax.random.uniform(k_u, (3, B, n))
    length = cfg.N_min + _uniform_int(u[2, :, 0], cfg.N_max - cfg.N_min + 1)
    z = _categorical_icdf(u[0], jnp.cumsum(theta, axis=1)[:, None, :])
    if cfg.topic_words == "disjoint":
        # uniform disjoint topics: word = topic block offset + uniform index, no V-wide search
        words = z * cfg.v + _uniform_int(u[1], cfg.v)
    else:
        cdf = jnp.asarray(np.cumsum(topic_word_matrix(cfg), axis=1), jnp.float32)
        words = _categorical_icdf(u[1], cdf[z])
    words = words.astype(jnp.int32)
    z = z.astype(jnp.int32)

    pos = jnp.arange(cfg.seq_len)[None, :]
    off = 1 if cfg.start_end else 0
    content = (pos >= off) & (pos < off + length[:, None])
    src = jnp.clip(pos - off, 0, n - 1)
    word_at = jnp.take_along_axis(words, jnp.broadcast_to(src, (B, cfg.seq_len)), axis=1)
    topic_at = jnp.take_along_axis(z, jnp.broadcast_to(src, (B, cfg.seq_len)), axis=1)
    tokens = jnp.where(content, word_at, cfg.PAD)
    if cfg.start_end:
        tokens = jnp.where(pos == 0, cfg.START, tokens)
        tokens = jnp.where(pos == length[:, None] + 1, cfg.END, tokens)
    valid = tokens != cfg.PAD
    topics = jnp.where(content, topic_at, -1)
    return Documents(tokens.astype(jnp.int32), valid, content, topics, theta,
                     length.astype(jnp.int32))
