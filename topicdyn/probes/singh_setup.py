"""Host-side constants of the embedding-space probes (probes/singh.py): the constructed contexts,
the evaluation set's [MASK] queries, and every Bayes reference on the same contexts.

The contexts are built from the run's fixed evaluation documents (so they are the same at every
checkpoint) with a fixed numpy generator. Bayes references come from theory.bayes_log_prob on
the very batches the model reads, so "the Bayes predictor gives 0 / 1" is a computed value here,
not an assumption.
"""
from __future__ import annotations

import dataclasses

import jax
import numpy as np

from topicdyn.config import Config
from topicdyn.data import word_topic
from topicdyn.masking import SHOW_MASK, sample_batch
from topicdyn.probes.contexts import clean_words, context_batch, max_visible, visible_words
from topicdyn.theory.common import owner_topic

SEED = 20230821  # the constructed contexts' own generator (fixed: identical at every checkpoint)
N_NOVEL, N_PAIR, N_CHAIN, N_ORDERS, N_WALK, N_SAMPLE = 32, 32, 12, 3, 12, 32
N_REF_DOCS = 4000  # generator documents of P-sample's reference


def _bayes(cfg: Config, batch):
    """(R, L, nv) log P*(. | visible words) of a batch, or None where the theory has none."""
    try:
        from topicdyn.theory import bayes_log_prob
        return bayes_log_prob(cfg, batch, use_query_token=False)
    except (ImportError, NotImplementedError, ValueError):
        return None


def _at_query(logp, qpos):
    return None if logp is None else logp[np.arange(len(qpos)), qpos]


def novel_contexts(cfg: Config, docs: list, rs: tuple) -> dict:
    """P-copy's out-of-distribution contexts: a word a (topic s) and a word b of another topic
    of the document each repeated r times, then the document's other words (every copy of a and
    b removed) up to a size fixed per document, the same for every r. Rows r-major:
    (len(rs) * n_docs)."""
    wt = word_topic(cfg.data)
    plan = []
    for x in docs:
        a = int(x[0])
        others = [int(w) for w in x if wt[w] != wt[a]]
        b = others[0] if others else None
        rest = [int(w) for w in x if w != a and w != b]
        per_r = 1 if b is None else 2
        size = min(len(rest) + per_r * min(rs), max_visible(cfg))  # holds r = min(rs)'s context
        plan.append((a, b, rest, per_r, size))
    vis, a_s, other = [], [], []
    for r in rs:
        for a, b, rest, per_r, size in plan:
            head = [a] * r + ([b] * r if b is not None else [])
            vis.append(np.asarray((head + rest)[:size], np.int32))
            a_s.append(a)
            m = wt == wt[a]
            m[a] = False
            other.append(m)
    batch, q = context_batch(cfg, vis, a_s)
    return {"novel_batch": batch, "novel_qpos": q, "novel_a": np.asarray(a_s, np.int32),
            "novel_other": np.asarray(other)}


def coherence_contexts(cfg: Config, docs: list, rng) -> dict:
    """P-coh: per document, O = a random share (1 - p_mask) of its words (the visibility of
    training) and m held-out words S. Pair rows (4 per document): P(w|O), P(w'|O+w), P(w'|O),
    P(w|O+w'). Chain rows: N_ORDERS random orders of S, each the chain P(s_j | O + s_<j)."""
    pv = 1.0 - cfg.mask.p_mask
    split = []
    for x in docs:
        x = rng.permutation(np.asarray(x))
        n_o = max(1, int(round(pv * len(x))))
        split.append((x[:n_o], x[n_o:]))
    m = int(min(6, min(len(s) for _, s in split)))
    if m < 2:
        return {}
    vis, tgt = [], []
    for o, s in split[:N_PAIR]:
        w, w2 = int(s[0]), int(s[1])
        for ctx, t in ((o, w), (np.r_[o, w], w2), (o, w2), (np.r_[o, w2], w)):
            vis.append(ctx)
            tgt.append(t)
    chain = split[:N_CHAIN]
    for o, s in chain:
        for _ in range(N_ORDERS):
            order = rng.permutation(s[:m])
            for j in range(m):
                vis.append(np.r_[o, order[:j]])
                tgt.append(int(order[j]))
    batch, q = context_batch(cfg, vis, tgt)
    out = {"coh_batch": batch, "coh_qpos": q, "coh_target": np.asarray(tgt, np.int32),
           "coh_shape": (min(N_PAIR, len(split)), len(chain), N_ORDERS, m)}
    if owner_topic(cfg) is not None:
        from topicdyn.theory.references import doc_log_likelihood
        out["coh_exact"] = np.asarray([doc_log_likelihood(cfg, np.r_[o, s[:m]])
                                       - doc_log_likelihood(cfg, o) for o, s in chain])
    return out


def walk_contexts(cfg: Config, docs: list) -> dict:
    """P-walk: the prefixes x[:n], n = 1..n_w, of N_WALK documents (the encoding walk), and
    per document the contexts O, O1 (its first half, with START/END) and O2 (the second half,
    no specials), O1 and O2 partitioning O's keys."""
    S = 2 if cfg.data.start_end else 0
    n_w = int(min(24, max_visible(cfg), min(len(x) for x in docs)))
    vis = [x[:n] for x in docs[:N_WALK] for n in range(1, n_w + 1)]
    keep = [True] * len(vis)
    o1_pos, l_uni = [], []
    for x in docs[:N_WALK]:
        n = min(len(x), max_visible(cfg))
        h = n // 2
        vis += [x[:n], x[:h], x[h:n]]
        keep += [True, True, False]
        start = 1 if S else 0
        pos = list(range(start, start + h))
        if S:
            pos += [0, start + n + 1]  # START and END of the row O
        o1_pos.append(pos)
        l_uni.append((h + S) / (n + S))
    batch, q = context_batch(cfg, vis, extra_keys=keep)
    o1_mask = np.zeros((len(o1_pos), batch.inputs.shape[1]), bool)
    for i, pos in enumerate(o1_pos):
        o1_mask[i, pos] = True
    return {"walk_batch": batch, "walk_qpos": q, "walk_shape": (min(N_WALK, len(docs)), n_w),
            "walk_o1": np.asarray(o1_mask), "walk_l_uniform": np.asarray(l_uni, np.float32)}


def sample_reference(cfg: Config, n_len: int) -> dict:
    """P-sample's reference: N_REF_DOCS generator documents of n_len words (their statistics'
    means and s.e.), and the control: an independent set of N_SAMPLE of them, i.e. what an
    exact sampler (the Bayes predictor's iterative unmasking is a Pólya urn: an exact LDA draw)
    gives at the probe's sample size."""
    data = dataclasses.replace(cfg.data, N_min=n_len, N_max=n_len)
    b = jax.device_get(sample_batch(jax.random.PRNGKey(SEED), data, cfg.mask,
                                    N_REF_DOCS + N_SAMPLE))
    words = np.stack(clean_words(b))
    return {"ref_words": words[:N_REF_DOCS], "control_words": words[N_REF_DOCS:]}


def prepare(cfg: Config, batch, bayes_visible) -> dict:
    """Constants of every embedding-space probe for cfg's evaluation batch (numpy arrays,
    tuples of sizes); bayes_visible: (B, L, nv) log P*(. | visible words) or None."""
    d = cfg.data
    rng = np.random.default_rng(SEED)
    docs = clean_words(batch)
    kind, sel = np.asarray(batch.kind), np.asarray(batch.selected)
    mb, ml = np.nonzero(sel & (kind == SHOW_MASK))
    V, T = d.V, d.T
    wt = word_topic(d)
    counts = np.zeros((len(docs), V))
    for i, x in enumerate(visible_words(batch)):
        counts[i] = np.bincount(x, minlength=V)
    tc = counts @ (wt[:, None] == np.arange(T)[None, :])
    out = {"mask_b": mb.astype(np.int32), "mask_l": ml.astype(np.int32),
           "mask_counts": counts[mb], "mask_prop": tc[mb] / np.maximum(tc[mb].sum(1, keepdims=True), 1)}
    if bayes_visible is not None:
        lp = np.asarray(bayes_visible, np.float64)[mb, ml]
        out["mask_bayes"] = lp
        if owner_topic(cfg) is not None:  # disjoint: E[theta_t | O] = P*(topic t | O)
            out["mask_post"] = np.exp(lp[:, :V]) @ (wt[:, None] == np.arange(T)[None, :])
    n_min = min(min(len(x) for x in docs), max_visible(cfg))
    rs = tuple(r for r in (1, 2, 4, 8) if 2 * r <= max(n_min // 2, 2))
    out.update(novel_contexts(cfg, docs[:N_NOVEL], rs))
    out["novel_rs"] = rs
    out["novel_bayes"] = _at_query(_bayes(cfg, out["novel_batch"]), out["novel_qpos"])
    out.update(coherence_contexts(cfg, docs, rng))
    if "coh_batch" in out:
        out["coh_bayes"] = _at_query(_bayes(cfg, out["coh_batch"]), out["coh_qpos"])
    out.update(walk_contexts(cfg, docs))
    if owner_topic(cfg) is not None:
        lp = _at_query(_bayes(cfg, out["walk_batch"]), out["walk_qpos"])
        if lp is not None:  # E[theta | O] along the walk: the Bayes reference of its steps
            post = np.exp(lp[:, :V]) @ (wt[:, None] == np.arange(T)[None, :])
            out["walk_bayes_post"] = post
    n_v = V // T if V % T == 0 else None
    train = np.zeros(V, bool)  # P-concept: 80% of each topic's words train the probe
    for t in range(T):
        idx = np.nonzero(wt == t)[0]
        train[idx[:max(1, int(round(0.8 * len(idx))))]] = True
    out["concept_train"] = train
    from topicdyn.theory.references import pmi, word_probabilities
    p1, p2 = word_probabilities(cfg)
    with np.errstate(divide="ignore"):
        out["pmi"] = pmi(cfg)
        out["log_cond"] = np.log(p2) - np.log(p1)[:, None]  # log P(w | w') [w', w]
    out["pmi_graded"] = len(np.unique(np.round(out["pmi"][~np.eye(V, dtype=bool)], 9))) > 2
    out["words_per_topic"] = n_v or 0
    n_len = int(min(32, d.N_min, max_visible(cfg)))
    out["sample_len"] = n_len
    out.update(sample_reference(cfg, n_len))
    return {k: v for k, v in out.items() if v is not None}
