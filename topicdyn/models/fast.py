"""Exact fast formulation of the MLM loss of the registered one-layer models.

Without positional encoding, the output at a query depends only on its input token x and on the
multiset of key tokens of its document, i.e. the count vector c_b (n_vocab,). Attention over L
positions therefore collapses to a softmax over the vocabulary:

    attn_h(x, b) = softmax_v(S_h[x, v] + log c_b[v]),   S_h = (E W^Q_h)(E W^K_h)^T / sqrt(d_head)
    out(x, b)    = concat_h attn_h(x, b) @ (E W^V_h)

and only the selected (loss) positions need outputs. They are compacted into a buffer of static
size `cap` (a ~10-sigma bound on their count); in the astronomically rare batch with more, further
chunks of `cap` positions run in a `lax.while_loop`, so the result is exact for every batch.

Why a loop and not `lax.cond` to the generic model: under `jax.vmap` (the training ensemble) a
cond with a batched predicate becomes a select that evaluates both branches, i.e. the generic
model would run on every step. A while_loop under vmap only runs extra iterations while some
member still needs them. Reverse-mode AD cannot go through a while_loop, so the chunk sum has a
custom VJP that accumulates the gradient w.r.t. the small vocabulary tables inside the loop;
autodiff then carries it from the tables back to the parameters.
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from topicdyn.config import Config

NEG_INF = -1e30  # same mask value as the generic model: exp underflows to exactly 0
MIN_CAP = 16
CAP_SIGMAS = 10.0

_SUPPORTED = ("attention", "embedding_only")


def fast_supported(cfg: Config) -> bool:
    """True when fast_loss reproduces training.loss_fn for this config."""
    m = cfg.model
    return (m.name in _SUPPORTED and m.loss in ("ce", "squared")
            and m.decoder in ("trained", "identity", "tied"))


def default_cap(cfg: Config, n_docs: int, seq_len: int) -> int:
    """Static buffer size: mean + 10 sd of the number of selected positions of a batch.

    The count is a sum over documents of Binomial(N_b, p_mask) with N_b uniform on
    [N_min, N_max]; its variance is B (E[N] p (1-p) + p^2 Var[N]).
    """
    d, p = cfg.data, cfg.mask.p_mask
    n_mean = (d.N_min + d.N_max) / 2
    n_var = ((d.N_max - d.N_min + 1) ** 2 - 1) / 12
    mean = n_docs * p * n_mean
    sd = math.sqrt(n_docs * (n_mean * p * (1 - p) + p * p * n_var))
    cap = max(MIN_CAP, int(math.ceil(mean + CAP_SIGMAS * sd)))
    cap = -(-cap // 8) * 8  # round up: friendlier shapes, no other meaning
    return min(cap, n_docs * seq_len)


def _counts(tokens, weight, n_vocab):
    """(B, L) tokens, (B, L) float weights -> (B, n_vocab) weighted token counts."""
    return jnp.einsum("bl,blv->bv", weight, jax.nn.one_hot(tokens, n_vocab, dtype=weight.dtype))


def _tables(params, batch, cfg: Config) -> tuple[dict, dict]:
    """Differentiable vocabulary tables (from params) and constant per-document data.

    tables: "S" (H, nv, nv) and "VE" (H, nv, dh) for attention; "doc_out" (B, d) or
    "doc_logits" (B, nv) for embedding_only; "E" (nv, d) for the residual; "ln"; "D" (d, nv).
    data: "logc" (B, nv) log key counts (attention only).
    """
    m = cfg.model
    nv, d, H = cfg.data.n_vocab, cfg.d_model, m.n_heads
    dh = d // H
    E = params["E"]
    VE = jnp.einsum("vd,hde->hve", E, params["WV"])  # (H, nv, dh)
    D = E.T if m.decoder == "tied" else params["W_dec"]
    key_w = batch.key_mask.astype(E.dtype)
    tables, data = {"D": D}, {}
    if m.residual:
        tables["E"] = E
    if m.layernorm:
        tables["ln"] = params["ln"]

    if m.name == "embedding_only":
        c = _counts(batch.inputs, key_w, nv)
        # the generic mean over an empty key set is 0 (weights w / max(sum w, 1)), as here
        w = c / jnp.maximum(c.sum(-1, keepdims=True), 1.0)
        doc_out = jnp.einsum("bv,hve->bhe", w, VE).reshape(-1, d)
        if m.residual:
            tables["doc_out"] = doc_out
        else:
            # the output is the same for every query of a document: decode once per document
            tables = {"doc_logits": _decode(doc_out, tables, m)}
    else:
        QE = jnp.einsum("vd,hde->hve", E, params["WQ"])
        KE = jnp.einsum("vd,hde->hve", E, params["WK"])
        tables["S"] = jnp.einsum("hxe,hve->hxv", QE, KE) / np.sqrt(dh)
        tables["VE"] = VE
        c_key = _counts(batch.inputs, key_w, nv)
        # an empty key set makes every generic score -1e30: a uniform softmax over all L slots
        c_all = _counts(batch.inputs, jnp.ones_like(key_w), nv)
        c = jnp.where(c_key.sum(-1, keepdims=True) > 0, c_key, c_all)
        data["logc"] = jnp.where(c > 0, jnp.log(jnp.maximum(c, 1.0)), NEG_INF)
    return tables, data


def _decode(out, tables, m):
    """(n, d) context -> (n, nv) logits: optional LayerNorm, then the decoder."""
    if m.layernorm:
        out = nn.LayerNorm().apply({"params": tables["ln"]}, out)
    return out @ tables["D"]


def _row_logits(tables, data, doc, x, cfg: Config):
    """Logits (n, nv) of n queries given their document index doc (n,) and input token x (n,)."""
    m = cfg.model
    if "doc_logits" in tables:
        return tables["doc_logits"][doc]
    if m.name == "embedding_only":
        out = tables["doc_out"][doc]
    else:
        scores = tables["S"][:, x, :] + data["logc"][doc][None]  # (H, n, nv)
        attn = jax.nn.softmax(scores, axis=-1)
        out = jnp.einsum("hnv,hve->nhe", attn, tables["VE"]).reshape(x.shape[0], -1)
    if m.residual:
        out = out + tables["E"][x]
    return _decode(out, tables, m)


def _per_position(logits, y, loss: str):
    """Loss per row, exactly as training.masked_loss computes it."""
    if loss == "ce":
        logz = jax.nn.logsumexp(logits, axis=-1)
        return logz - jnp.take_along_axis(logits, y[:, None], axis=-1)[:, 0]
    onehot = jax.nn.one_hot(y, logits.shape[-1], dtype=logits.dtype)
    return jnp.sum((logits - onehot) ** 2, axis=-1)


def _chunk(sel, rank, n, k, cap):
    """Flat indices (cap,) of the n selected positions with rank in [k cap, (k+1) cap), and a
    (cap,) validity mask; unused slots point at position 0 and are masked out."""
    idx = jnp.nonzero(sel & (rank >= k * cap), size=cap, fill_value=0)[0]
    return idx, jnp.arange(cap) < n - k * cap


def _make_sum(cfg: Config, L: int, cap: int, n_chunks_max: int):
    """sum_over_selected(tables, data, sel, rank, inputs, targets) with a custom VJP."""
    loss = cfg.model.loss

    def chunk_sum(tables, data, k, sel, rank, inputs, targets):
        idx, valid = _chunk(sel, rank, n_sel(sel), k, cap)
        logits = _row_logits(tables, data, idx // L, inputs[idx], cfg)
        per = _per_position(logits, targets[idx], loss)
        return jnp.sum(jnp.where(valid, per, 0.0))

    def n_sel(sel):
        return jnp.sum(sel.astype(jnp.int32))

    def loop(body, init, sel):
        # chunk 0 is computed outside; the loop only runs when the batch overflows cap
        if n_chunks_max <= 1:
            return init
        n = n_sel(sel)
        cond = lambda carry: carry[0] * cap < n
        return jax.lax.while_loop(cond, body, (jnp.int32(1),) + init)[1:]

    @jax.custom_vjp
    def total(tables, data, sel, rank, inputs, targets):
        args = (sel, rank, inputs, targets)
        acc = chunk_sum(tables, data, 0, *args)

        def body(carry):
            k, acc = carry
            return k + 1, acc + chunk_sum(tables, data, k, *args)

        return loop(body, (acc,), sel)[0]

    grad_chunk = jax.value_and_grad(chunk_sum)

    def fwd(tables, data, sel, rank, inputs, targets):
        args = (sel, rank, inputs, targets)
        acc, g = grad_chunk(tables, data, 0, *args)

        def body(carry):
            k, acc, g = carry
            v, gk = grad_chunk(tables, data, k, *args)
            return k + 1, acc + v, jax.tree.map(jnp.add, g, gk)

        acc, g = loop(body, (acc, g), sel)
        return acc, g

    def bwd(g_tables, ct):
        return (jax.tree.map(lambda t: ct * t, g_tables), None, None, None, None, None)

    total.defvjp(fwd, bwd)
    return total


def fast_loss(params, batch, cfg: Config, cap: int | None = None) -> jax.Array:
    """training.loss_fn(params, batch, cfg) computed through vocabulary tables.

    batch: an MLMBatch-like object with (B, L) inputs, targets, selected, key_mask.
    cap: static number of selected positions processed per chunk (default: default_cap).
    Returns the scalar mean loss over selected positions.
    """
    if not fast_supported(cfg):
        raise ValueError(f"fast_loss does not handle model {cfg.model.name!r}")
    B, L = batch.inputs.shape
    cap = default_cap(cfg, B, L) if cap is None else min(int(cap), B * L)
    tables, data = _tables(params, batch, cfg)
    sel = batch.selected.reshape(-1)
    rank = jnp.cumsum(sel.astype(jnp.int32)) - 1
    total = _make_sum(cfg, L, cap, -(-(B * L) // cap))
    s = total(tables, data, sel, rank, batch.inputs.reshape(-1), batch.targets.reshape(-1))
    n = jnp.sum(sel.astype(s.dtype))
    return s / jnp.maximum(n, 1.0)
