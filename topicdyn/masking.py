"""MLM corruption (BRIEF §3) and the key-set convention.

Each content position is selected with probability p_mask; a selected position shows [MASK], a
random token or its own token. The loss is taken at selected positions only. With
key_set="unselected" (the reference code's convention) every selected position, whatever it shows,
is removed from the attention keys, so each query attends only to unselected tokens (START and END
included). With key_set="all" every non-PAD position is a key.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from topicdyn.config import DataConfig, MaskConfig
from topicdyn.data import Documents, _uniform_int, sample_documents

# values of MLMBatch.kind
NOT_SELECTED, SHOW_MASK, SHOW_RANDOM, SHOW_KEEP = 0, 1, 2, 3


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
    """Apply MLM selection and replacement to clean documents."""
    # a single uniform draw (see data.sample_documents on compile time)
    u = jax.random.uniform(key, (3,) + docs.tokens.shape)
    selected = docs.content & (u[0] < mask.p_mask)
    r = u[1]
    kind = jnp.where(r < mask.p_replace_mask, SHOW_MASK,
                     jnp.where(r < mask.p_replace_mask + mask.p_replace_random,
                               SHOW_RANDOM, SHOW_KEEP))
    kind = jnp.where(selected, kind, NOT_SELECTED).astype(jnp.int32)
    hi = data.V if mask.random_source == "content" else data.n_vocab
    rand_tok = _uniform_int(u[2], hi)
    inputs = jnp.where(kind == SHOW_MASK, data.MASK,
                       jnp.where(kind == SHOW_RANDOM, rand_tok, docs.tokens)).astype(jnp.int32)
    key_mask = docs.valid & ~selected if mask.key_set == "unselected" else docs.valid
    return MLMBatch(inputs, docs.tokens, selected, key_mask, kind, docs.topics, docs.theta,
                    docs.valid)


def sample_batch(key: jax.Array, data: DataConfig, mask: MaskConfig,
                 batch: int | None = None) -> MLMBatch:
    """Documents then corruption, from one key: the whole input pipeline of one step."""
    k_doc, k_mask = jax.random.split(key)
    return corrupt(k_mask, sample_documents(k_doc, data, batch), data, mask)
