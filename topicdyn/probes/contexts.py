"""Constructed query contexts for the embedding-space probes (EMBEDDING_SPACE.md §3), host-side.

A context is a multiset O of visible content words and one [MASK] query. It is laid out as a
training document would be, [START] O [MASK] [END] [PAD ...] (without START/END when
data.start_end is off), with O and START/END as the keys and the [MASK] position selected, so
any variant's own `apply` gives P_m(. | O) at the query position: the probes read the model as
it trains, never a re-derivation of it. The Bayes predictor reads the same batch
(theory.bayes_log_prob), which gives each statistic its exact reference on the same contexts.
"""
from __future__ import annotations

import numpy as np

from topicdyn.config import Config
from topicdyn.masking import NOT_SELECTED, SHOW_MASK, MLMBatch


def max_visible(cfg: Config) -> int:
    """Most visible words a constructed context can hold (one position is the query)."""
    return cfg.data.seq_len - 1 - (2 if cfg.data.start_end else 0)


def context_batch(cfg: Config, visible: list, targets=None, extra_keys: list | None = None
                  ) -> tuple[MLMBatch, np.ndarray]:
    """(batch, query position (R,)) for R contexts: visible[r] the words of O (a sequence of
    content ids, at most max_visible(cfg)), targets[r] the query's true word (0 if not given).
    extra_keys[r]: False to drop START/END from the keys of row r (a context of content words
    only, for the composition test of P-walk)."""
    d = cfg.data
    # as long as the longest context needs (at most the training length): padding is masked
    # out, so a shorter row is the same model on the same input, at a fraction of the cost
    R = len(visible)
    L = min(d.seq_len, max(len(w) for w in visible) + 1 + (2 if d.start_end else 0))
    inputs = np.full((R, L), d.PAD, np.int32)
    keys = np.zeros((R, L), bool)
    sel = np.zeros((R, L), bool)
    kind = np.full((R, L), NOT_SELECTED, np.int32)
    tg = np.full((R, L), d.PAD, np.int32)
    qpos = np.zeros(R, np.int32)
    wt = None
    for r, words in enumerate(visible):
        words = np.asarray(words, np.int32)
        if len(words) > max_visible(cfg):
            raise ValueError(f"context of {len(words)} words > {max_visible(cfg)}")
        specials = extra_keys is None or extra_keys[r]
        pos = 0
        if d.start_end:
            inputs[r, 0], keys[r, 0] = d.START, specials
            pos = 1
        n = len(words)
        inputs[r, pos:pos + n], keys[r, pos:pos + n] = words, True
        tg[r, pos:pos + n] = words
        q = pos + n
        inputs[r, q], sel[r, q], kind[r, q] = d.MASK, True, SHOW_MASK
        tg[r, q] = 0 if targets is None else int(targets[r])
        qpos[r] = q
        if d.start_end:
            inputs[r, q + 1], keys[r, q + 1] = d.END, specials
    from topicdyn.data import word_topic

    wt = word_topic(d)
    topics = np.where(tg < d.V, wt[np.minimum(tg, d.V - 1)], -1).astype(np.int32)
    batch = MLMBatch(inputs=inputs, targets=np.where(tg == d.PAD, inputs, tg).astype(np.int32),
                     selected=sel, key_mask=keys, kind=kind, topics=topics,
                     theta=np.zeros((R, d.T), np.float32), valid=inputs != d.PAD)
    return batch, qpos


def clean_words(batch) -> list[np.ndarray]:
    """The content words of each document of an MLMBatch (its clean targets), in order."""
    tg, ok = np.asarray(batch.targets), np.asarray(batch.topics) >= 0
    return [tg[b][ok[b]] for b in range(tg.shape[0])]


def visible_words(batch) -> list[np.ndarray]:
    """The visible (key) content words of each document of an MLMBatch."""
    inp, keys, ok = np.asarray(batch.inputs), np.asarray(batch.key_mask), \
        np.asarray(batch.topics) >= 0
    return [inp[b][keys[b] & ok[b]] for b in range(inp.shape[0])]
