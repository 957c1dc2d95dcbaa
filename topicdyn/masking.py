"""MLM corruption (BRIEF §3) and the key-set convention.

Each content position is selected with probability p_mask; a selected position shows [MASK], a
random token or its own token. The loss is taken at selected positions only. With
key_set="unselected" (the reference code's convention) every selected position, whatever it shows,
is removed from the attention keys, so each query attends only to unselected tokens (START and END
included). With key_set="all" every non-PAD position is a key.
"""
from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from topicdyn.config import DataConfig, MaskConfig
from topicdyn.data import (Documents, _below, _threshold, derive_key, document_words,
                           documents_from_words, key_words, random_words)

# values of MLMBatch.kind (NEXT_TOKEN: a causal-objective loss position)
NOT_SELECTED, SHOW_MASK, SHOW_RANDOM, SHOW_KEEP, NEXT_TOKEN = 0, 1, 2, 3, 4
QUERY_KINDS = {"mask": SHOW_MASK, "keep": SHOW_KEEP, "random": SHOW_RANDOM}  # losses split by
# what a selected position shows: [MASK], its own word, a random word


class MLMBatch(NamedTuple):
    """Model input plus targets and ground truth. Shapes (B, L) unless noted."""

    inputs: jax.Array  # int32 corrupted tokens the model sees
    targets: jax.Array  # int32 clean tokens
    selected: jax.Array  # bool: loss positions
    key_mask: jax.Array  # bool: positions that may be attended to
    kind: jax.Array  # int32: NOT_SELECTED / SHOW_MASK / SHOW_RANDOM / SHOW_KEEP
    topics: jax.Array  # int32: generating topic of content words, -1 elsewhere
    theta: jax.Array  # (B, T) float32
    valid: jax.Array  # bool: not PAD


def corrupt(key: jax.Array, docs: Documents, data: DataConfig, mask: MaskConfig) -> MLMBatch:
    """Apply MLM selection and replacement to clean documents.

    One uint32 word r per position decides everything: selected iff r < t_sel = p_mask 2^32;
    [MASK] iff r < t_mask = p_mask p_replace_mask 2^32, a random token iff t_mask <= r < t_rand,
    else its own token. Inside [t_mask, t_rand) the offset r - t_mask is uniform on those integers
    and picks the random token, so no position needs a second word (errors ~2^-32 per threshold,
    and <= n_vocab / (t_rand - t_mask) relative for the token, below float32 uniforms' 2^-23).
    """
    return corrupt_from_words(random_words(key_words(key), docs.tokens.shape), docs, data, mask)


class MaskThresholds(NamedTuple):
    """MLM probabilities as the integer thresholds of corrupt(), as arrays: traced values, so
    that ensemble members can differ in them (sweeps vmap a leading member axis).

    t_* hold min(t, 2^32 - 1) as uint32 and full[i] marks t = 2^32 (an event that always
    happens), for i = selection, [MASK], [MASK]-or-random."""

    t_sel: jax.Array  # uint32
    t_mask: jax.Array  # uint32
    t_rand: jax.Array  # uint32
    full: jax.Array  # bool (..., 3)
    rand_scale: jax.Array  # float32: random-token ids per threshold unit (0: no random tokens)


def _python_thresholds(data: DataConfig, mask: MaskConfig) -> tuple[int, int, int, float]:
    t_mask = _threshold(mask.p_mask * mask.p_replace_mask)
    t_rand = _threshold(mask.p_mask * (mask.p_replace_mask + mask.p_replace_random))
    t_sel = _threshold(mask.p_mask)
    hi = data.V if mask.random_source == "content" else data.n_vocab
    return t_sel, t_mask, t_rand, (hi / (t_rand - t_mask) if t_rand > t_mask else 0.0)


def mask_thresholds(data: DataConfig, masks: list[MaskConfig]) -> MaskThresholds:
    """Host-side MaskThresholds with a leading axis over `masks` (one per ensemble member),
    equal to what corrupt() derives from each MaskConfig (the same integers and float32)."""
    rows = [_python_thresholds(data, m) for m in masks]
    top = 2 ** 32 - 1
    u = lambda i: np.asarray([min(r[i], top) for r in rows], np.uint32)  # noqa: E731
    full = np.asarray([[r[i] > top for i in range(3)] for r in rows], bool)
    scale = np.asarray([r[3] for r in rows], np.float64).astype(np.float32)
    return MaskThresholds(u(0), u(1), u(2), full, scale)


def corrupt_from_words(r: jax.Array, docs: Documents, data: DataConfig,
                       mask: MaskConfig, thr: MaskThresholds | None = None) -> MLMBatch:
    """corrupt() with the per-position random words r (uint32, docs.tokens.shape) given.
    thr: the probabilities as traced thresholds (one member's); None takes them from `mask` as
    compile-time constants. Both give identical batches for the same probabilities."""
    hi = data.V if mask.random_source == "content" else data.n_vocab
    if thr is None:
        t_sel, t_mask, t_rand, scale = _python_thresholds(data, mask)
        selected = docs.content & _below(r, t_sel)
        show_mask = _below(r, t_mask)
        show_rand = ~show_mask & _below(r, t_rand)
        if t_rand > t_mask:
            off = (r - jnp.uint32(t_mask)).astype(jnp.float32)  # < t_rand - t_mask where used
            rand_tok = jnp.minimum(jnp.floor(off * jnp.float32(scale)).astype(jnp.int32), hi - 1)
        else:
            rand_tok = jnp.zeros(r.shape, jnp.int32)
    else:
        selected = docs.content & ((r < thr.t_sel) | thr.full[0])
        show_mask = (r < thr.t_mask) | thr.full[1]
        show_rand = ~show_mask & ((r < thr.t_rand) | thr.full[2])
        off = (r - thr.t_mask).astype(jnp.float32)  # rand_scale = 0 where no random range
        rand_tok = jnp.minimum(jnp.floor(off * thr.rand_scale).astype(jnp.int32), hi - 1)
    kind = jnp.where(show_mask, SHOW_MASK, jnp.where(show_rand, SHOW_RANDOM, SHOW_KEEP))
    kind = jnp.where(selected, kind, NOT_SELECTED).astype(jnp.int32)
    inputs = jnp.where(kind == SHOW_MASK, data.MASK,
                       jnp.where(kind == SHOW_RANDOM, rand_tok, docs.tokens)).astype(jnp.int32)
    key_mask = docs.valid & ~selected if mask.key_set == "unselected" else docs.valid
    # materialised once (see data.sample_documents)
    return jax.lax.optimization_barrier(MLMBatch(inputs, docs.tokens, selected, key_mask, kind,
                                                 docs.topics, docs.theta, docs.valid))


def causal_batch(docs: Documents, data: DataConfig) -> MLMBatch:
    """The next-token objective on clean documents: position i shows token i and predicts token
    i + 1, with a loss where that next token is a content word (START predicts the first word;
    the last word's END is not a target). key_mask holds every non-PAD position; the model
    restricts each query to its prefix (models/layers.query_key_mask), so the batch has one
    key set per query, not per document."""
    tok = docs.tokens
    B = tok.shape[0]
    targets = jnp.concatenate([tok[:, 1:], jnp.full((B, 1), data.PAD, tok.dtype)], axis=1)
    selected = jnp.concatenate([docs.content[:, 1:], jnp.zeros((B, 1), bool)], axis=1)
    kind = jnp.where(selected, NEXT_TOKEN, NOT_SELECTED).astype(jnp.int32)
    return jax.lax.optimization_barrier(MLMBatch(tok.astype(jnp.int32), targets.astype(jnp.int32),
                                                 selected, docs.valid, kind, docs.topics,
                                                 docs.theta, docs.valid))


def sample_batch(key: jax.Array, data: DataConfig, mask: MaskConfig,
                 batch: int | None = None, thr: MaskThresholds | None = None) -> MLMBatch:
    """Documents then corruption, from one key: the whole input pipeline of one step.
    Jitted (configs static), so an eager call runs one compiled program, not ~10^3 small ops.
    thr: optional traced mask probabilities (see corrupt_from_words)."""
    return _sample_batch(key, data, mask, batch, thr)


@partial(jax.jit, static_argnums=(1, 2, 3))
def _sample_batch(key, data: DataConfig, mask: MaskConfig, batch: int | None,
                  thr: MaskThresholds | None = None) -> MLMBatch:
    # one threefry kernel for every random word of the batch (documents, then corruption)
    B = data.batch_size if batch is None else batch
    kw = key_words(key)
    n_doc = document_words(data, B)
    r = random_words(kw, (n_doc + B * data.seq_len,))
    docs = documents_from_words(derive_key(kw, 0), r[:n_doc], data, B)
    if mask.objective == "causal":
        return causal_batch(docs, data)
    return corrupt_from_words(r[n_doc:].reshape(B, data.seq_len), docs, data, mask, thr)
