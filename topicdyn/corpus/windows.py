"""Training batches from a corpus: windows of N tokens drawn inside the jitted step.

The split's token stream and its window starts are compile-time constants of the sampler (a few
hundred kB for the shipped sample), so a batch is a function of (seed, step) alone, as for the
LDA generator, and the training loop cannot tell the two sources apart.
"""
from __future__ import annotations

import jax.numpy as jnp

from topicdyn.corpus.text import load_corpus


def window_documents(r: jnp.ndarray, cfg, B: int):
    """Documents (topicdyn.data.Documents) of B windows from the random uint32 words r
    (document_words(cfg, B) of them: the first B pick the windows, the last B the lengths).

    A window starts uniformly among the offsets where N_max tokens fit inside one article of
    cfg.split (modulo bias below S / 2^32 for S starts) and keeps its first N tokens, N
    uniform in [N_min, N_max] as for generated documents. Real text has no generating topic:
    topics are -1 and theta 0."""
    from topicdyn.data import Documents, uniform_below  # late: data imports this lazily

    c = load_corpus(cfg)
    stream = jnp.asarray(c.stream(cfg.split))
    starts = jnp.asarray(c.starts(cfg.split))
    L, off = cfg.seq_len, (1 if cfg.start_end else 0)
    pick = r[:B] % jnp.uint32(len(c.starts(cfg.split)))
    start = starts[pick.astype(jnp.int32)]
    length = cfg.N_min + uniform_below(r[B * L:B * L + B], cfg.N_max - cfg.N_min + 1)
    pos = jnp.arange(L)[None, :]
    content = (pos >= off) & (pos < off + length[:, None])
    idx = jnp.clip(start[:, None] + pos - off, 0, len(c.stream(cfg.split)) - 1)
    tokens = jnp.where(content, stream[idx], cfg.PAD)
    if cfg.start_end:
        tokens = jnp.where(pos == 0, cfg.START, tokens)
        tokens = jnp.where(pos == length[:, None] + 1, cfg.END, tokens)
    return Documents(tokens.astype(jnp.int32), tokens != cfg.PAD, content,
                     jnp.full((B, L), -1, jnp.int32), jnp.zeros((B, cfg.T), jnp.float32),
                     length.astype(jnp.int32))
