"""The "attention" and "loss" probes computed in vocabulary space (same numbers, far less work).

Without positional encoding a query's attention and output depend only on its input token x and
on the multiset of key tokens of its document (models/fast.py). On the fixed evaluation set every
per-position sum of the two probes therefore regroups into sums over (document, token) cells,
weighted by counts that the evaluation set fixes once (numpy, in `prepare`):

* attention: one key position holding token v gets alpha_h(x, b)[v] = A_h(x, b)[v] / c_b[v], with
  A_h(x, b) = softmax_v(S_h[x, v] + log c_b[v]) and c_b the key counts. A category sum over
  (query, key) pairs is sum_{b,x,v} m_b[x] n_b A(x, b)[v] [cat(x, v)] (m_b[x]: queries showing x,
  n_b: number of keys) and its pair count sum_{b,x,v} m_b[x] c_b[v] [cat(x, v)] is a constant.
* loss: only selected positions enter, so their (document, token, target) rows are listed once
  and the model's logits are computed for those rows alone (models/fast.row_logits).

The generic implementations in probes/__init__.py define the probes;
tests/test_vocab_probes.py checks that both agree. `prepare` returns None for a model the fast formulation does not cover, and the
generic implementations are used.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from topicdyn.config import Config
from topicdyn.masking import SHOW_MASK
from topicdyn.models.fast import NEG_INF, fast_supported, row_logits, vocab_tables
from topicdyn.probes.stats import doc_token_counts
from topicdyn.xla import device_array


def prepare(cfg: Config, batch, labels: np.ndarray, bayes_logp,
            bayes_visible_logp=None) -> dict | None:
    """Host-side constants of the evaluation batch for the vocabulary-space probes."""
    if not fast_supported(cfg):
        return None
    nv, V = cfg.data.n_vocab, cfg.data.V
    inputs, targets = np.asarray(batch.inputs), np.asarray(batch.targets)
    keys, sel = np.asarray(batch.key_mask), np.asarray(batch.selected)
    qok = np.asarray(batch.valid) & (inputs < V)
    c = doc_token_counts(inputs, keys, nv)
    m = doc_token_counts(inputs, qok, nv)
    n = c.sum(1)
    # the (document, query token) cells that hold a query: a document shows few distinct words,
    # so these rows are a small share of all B x nv cells
    r_doc, r_x = np.nonzero(m)
    cr, nr = c[r_doc], np.maximum(n[r_doc], 1.0)[:, None]
    logc = np.log(np.maximum(cr, 1.0))
    out = {"key_counts": c, "row_doc": r_doc, "row_x": r_x,
           "row_logc": np.where(cr > 0, logc, NEG_INF),
           "row_has_key": (n[r_doc] > 0).astype(np.float32),
           "row_a_uniform": cr / nr,
           "row_log_n_over_c": np.where(cr > 0, np.log(nr) - logc, 0.0)}
    eye = np.eye(nv, dtype=bool)
    weights, names = [], []
    lab = np.asarray(labels)
    ok = lab >= 0
    mq = m * ok[None, :]  # queries with a topic (content words: always)
    both = ok[:, None] & ok[None, :]
    same = lab[:, None] == lab[None, :]
    cats = {"same_token": both & eye, "same_topic": both & same & ~eye,
            "cross_topic": both & ~same, "same_topic_all": both & same}
    mr = mq[r_doc, r_x]  # queries of each row
    for name, cat in cats.items():
        pairs = max(float(np.einsum("bx,xv,bv->", mq, cat, c)), 1.0)
        # a category sum is sum_r m_r n_r A_r[v] [cat(x_r, v)]: the weight of A_r[v]
        weights.append((mr * n[r_doc])[:, None] * cat[r_x] / pairs)
        names.append(name)
    out["row_m"] = mr / max(float(mq.sum()), 1.0)
    out["row_weights"] = np.stack(weights)  # (categories, rows, nv)
    out["names"] = names
    b_idx, pos = np.nonzero(sel)
    out["sel_doc"], out["sel_x"] = b_idx.astype(np.int32), inputs[b_idx, pos].astype(np.int32)
    out["sel_y"] = targets[b_idx, pos].astype(np.int32)
    out["sel_mask_kind"] = (np.asarray(batch.kind)[b_idx, pos] == SHOW_MASK).astype(np.float32)
    if bayes_logp is not None:
        out["sel_bayes"] = np.asarray(bayes_logp)[b_idx, pos]
    if bayes_visible_logp is not None:
        out["sel_bayes_visible"] = np.asarray(bayes_visible_logp)[b_idx, pos]
    ints = ("sel_doc", "sel_x", "sel_y", "row_doc", "row_x")
    out = {k: v if k == "names" else device_array(v, np.int32 if k in ints else np.float32)
           for k, v in out.items()}
    from topicdyn.probes.population import uniform_attention
    out["uniform"] = uniform_attention(cfg)
    return out


def row_attention(params, cfg: Config, vc: dict):
    """A (rows, nv_key): head-averaged attention of the query token x_r of row r in its document
    summed over the key positions holding each token v (zero for a document without keys).
    vc: "row_x" (rows,) query tokens, "row_logc" (rows, nv) log key counts of the row's
    document (NEG_INF where 0), "row_has_key" (rows,) 0/1; embedding_only: "row_a_uniform"."""
    if cfg.model.name == "embedding_only" or vc.get("uniform"):
        return vc["row_a_uniform"]  # uniform over the keys: A = c_b / n_b for every x
    E, H = params["E"], cfg.model.n_heads
    QE = jnp.einsum("vd,hde->hve", E, params["WQ"])
    KE = jnp.einsum("vd,hde->hve", E, params["WK"])
    S = jnp.einsum("hxe,hve->hxv", QE[:, vc["row_x"]], KE) / math.sqrt(cfg.d_model // H)
    A = jnp.mean(jax.nn.softmax(S + vc["row_logc"][None], axis=-1), axis=0)
    return A * vc["row_has_key"][:, None]


def probe_attention(params, ctx) -> dict:
    """= probes.probe_attention_generic (correct labels), in vocabulary space."""
    vc, cfg = ctx.vocab, ctx.cfg
    A = row_attention(params, cfg, vc)
    sums = jnp.einsum("rv,crv->c", A, vc["row_weights"])
    # KL(a_i || uniform over the keys) per row: sum_v A log(A n / c)
    logt = jnp.log(jnp.where(A > 0, A, 1.0)) + vc["row_log_n_over_c"]
    kl = jnp.sum(jnp.where(A > 0, A * logt, 0.0), axis=-1)
    s = dict(zip(vc["names"], sums))
    s["ratio"] = s["same_topic"] / jnp.maximum(s["cross_topic"], 1e-12)
    s["ratio_all"] = s["same_topic_all"] / jnp.maximum(s["cross_topic"], 1e-12)
    s["kl_uniform"] = jnp.sum(vc["row_m"] * kl)
    return s


def probe_loss(params, ctx) -> dict:
    """= probes.probe_loss, from the logits of the selected positions only."""
    vc, cfg = ctx.vocab, ctx.cfg
    V, nv = cfg.data.V, cfg.data.n_vocab
    tables, data = vocab_tables(params, None, cfg, counts=vc["key_counts"],
                                uniform=vc["uniform"])
    logits = row_logits(tables, data, vc["sel_doc"], vc["sel_x"], cfg)  # (R, nv)
    logp = jax.nn.log_softmax(logits, axis=-1)
    n = max(int(vc["sel_y"].shape[0]), 1)
    y = vc["sel_y"]
    if cfg.model.loss == "ce":
        per = -jnp.take_along_axis(logp, y[:, None], axis=-1)[:, 0]
    else:
        per = jnp.sum((logits - jax.nn.one_hot(y, nv, dtype=logits.dtype)) ** 2, axis=-1)
    out = {"eval_loss": jnp.sum(per) / n}

    def kl_from(q):  # q (..., nv) reference probabilities
        t = jnp.where(q > 0, q * (jnp.log(jnp.where(q > 0, q, 1.0)) - logp), 0.0)
        return jnp.sum(t) / n

    out["kl_uniform"] = kl_from(jnp.where(jnp.arange(nv) < V, 1.0 / V, 0.0)[None])
    out["kl_unigram"] = kl_from(ctx.unigram[None])
    if "sel_bayes" in vc:
        out["kl_bayes"] = kl_from(jnp.exp(vc["sel_bayes"]))
        from topicdyn.probes import floor_names, floor_values  # shared with the generic probe
        every = jnp.ones(y.shape, bool)  # the rows are the selected positions
        for name, key in zip(floor_names(cfg), ("sel_bayes", "sel_bayes_visible")):
            if key in vc:
                out[name] = floor_values(vc[key], y, every)
    return out
