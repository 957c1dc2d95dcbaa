"""The permutation baseline of the topic statistics: the same statistics with shuffled labels.

A same-topic minus cross-topic gap is only evidence of topic structure where it exceeds what
labels unrelated to the model give. The "permuted" probe recomputes the embedding Gram's block
statistics and the attention statistics under N_PERM fixed random permutations of the labels
among the labelled words (topic sizes kept) and reports their mean and standard deviation:
`gram_gap_perm_mean`, `gram_gap_perm_sd`, `attn_ratio_perm_mean`, ... A gap that the probe
`blocks` (or `attention`) reports inside a couple of sd of the permuted mean is not evidence.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from topicdyn.models import get_variant
from topicdyn.models.layers import query_key_mask
from topicdyn.models.variant import VALUE_MAP
from topicdyn.probes import register
from topicdyn.probes.stats import attention_stats, block_stats, center_rows

N_PERM = 8
PERM_SEED = 20230  # fixed: every checkpoint and every run sees the same permutations
GRAM_STATS = ("gap", "same", "cross", "block_score")
ATTN_STATS = ("ratio", "same_topic", "cross_topic")


def permuted_labels(word_topic: np.ndarray, n: int = N_PERM) -> list[np.ndarray]:
    """n copies of word_topic (V,) with the labels of the labelled words (>= 0) shuffled."""
    wt = np.asarray(word_topic)
    idx = np.flatnonzero(wt >= 0)
    rng = np.random.default_rng(PERM_SEED)
    out = []
    for _ in range(n):
        p = wt.copy()
        p[idx] = wt[idx][rng.permutation(len(idx))]
        out.append(p)
    return out


def _summary(prefix: str, rows: list[dict], names) -> dict:
    out = {}
    for k in names:
        v = jnp.stack([r[k] for r in rows])
        out[f"{prefix}{k}_perm_mean"] = jnp.mean(v)
        out[f"{prefix}{k}_perm_sd"] = jnp.std(v, ddof=1)
    return out


@register("permuted", requires=(VALUE_MAP,))
def probe_permuted(params, params0, ctx) -> dict:
    """Gram block statistics and attention statistics under shuffled labels (mean, sd)."""
    cfg, b = ctx.cfg, ctx.batch
    V, nv = cfg.data.V, cfg.data.n_vocab
    perms = permuted_labels(ctx.word_topic)
    variant = get_variant(cfg.model.name)
    out = {}
    mats = variant.matrices(params, cfg)
    if "E" in mats:
        E = mats["E"]
        Ec = center_rows(E, V) if cfg.model.embedding == "trained" else E
        G = Ec @ Ec.T
        out.update(_summary("gram_", [block_stats(G, p) for p in perms], GRAM_STATS))
    _, acts = variant.apply(params, b, cfg, capture=True)
    names = sorted(k for k in acts if k.startswith("attention"))
    if names:
        q_ok = b.valid & (b.inputs < V)
        keys = query_key_mask(b.key_mask, cfg.mask.objective)
        rows = []
        for p in perms:
            lab = np.full(nv, -1)
            lab[:V] = p
            rows.append(attention_stats(acts[names[0]], b.inputs, b.inputs, keys, q_ok,
                                        jnp.asarray(lab)))
        out.update(_summary("attn_", rows, ATTN_STATS))
    return out
