"""Exact fast formulation of the MLM loss of the registered one-layer models.

Without positional encoding, the output at a query depends only on its input token x and on the
multiset of key tokens of its document, i.e. the count vector c_b (n_vocab,). Attention over L
positions therefore collapses to a softmax over the vocabulary:

    attn_h(x, b) = softmax_v(S_h[x, v] + log c_b[v]),   S_h = (E W^Q_h)(E W^K_h)^T / sqrt(d_head)
    out(x, b)    = concat_h attn_h(x, b) @ (E W^V_h)

and only the selected (loss) positions need outputs. Two groups of them:

* queries showing [MASK] (80% under the default corruption) share one output per document: the
  model runs on B rows and their loss is a count-weighted sum over (document, target) cells;
* the other selected positions are compacted into a buffer of static size `cap` (a ~10-sigma
  bound on their count). In the astronomically rare batch with more, further chunks of `cap`
  positions run in a `lax.while_loop`, so the result is exact for every batch.

Why a loop and not `lax.cond` to the generic model: under `jax.vmap` (the training ensemble) a
cond with a batched predicate becomes a select that evaluates both branches, so the generic model
would run on every step. A while_loop under vmap only iterates while some member needs it.
Reverse-mode AD cannot go through a while_loop, so the chunk sum has a custom VJP that
accumulates the gradient w.r.t. the small vocabulary tables inside the loop; ordinary autodiff
carries it from the tables back to the parameters. (So: jit, vmap, scan and grad work; forward
mode and second derivatives of the chunk sum do not.)
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from topicdyn.config import Config
from topicdyn.models.kernels import FAST, exact

NEG_INF = -1e30  # same mask value as the generic model: exp underflows to exactly 0
MIN_CAP = 16
CAP_SIGMAS = 10.0

def fast_supported(cfg: Config) -> bool:
    """True when fast_loss reproduces training.loss_fn for this config (kernels.FAST declares
    every field it is exact for; anything else rules it out)."""
    return exact(FAST, cfg)


def _query_free(cfg: Config) -> bool:
    """The output does not depend on the query token (uniform pooling, no residual)."""
    return cfg.model.name == "embedding_only" and not cfg.model.residual


def default_cap(cfg: Config, n_docs: int, seq_len: int, sigmas: float = CAP_SIGMAS) -> int:
    """Static chunk size for the selected positions that do not show [MASK].

    Their count is a sum over documents of Binomial(N_b, p) with p = p_mask (1 - p_replace_mask)
    and N_b uniform on [N_min, N_max]: mean B p E[N], variance B (E[N] p (1-p) + p^2 Var[N]).
    The cap is mean + `sigmas` sd (default 10; at least MIN_CAP), never more than the B L
    positions.
    """
    d = cfg.data
    p = cfg.mask.p_mask * (1.0 - cfg.mask.p_replace_mask)
    n_mean = (d.N_min + d.N_max) / 2
    n_var = ((d.N_max - d.N_min + 1) ** 2 - 1) / 12
    mean = n_docs * p * n_mean
    sd = math.sqrt(n_docs * (n_mean * p * (1 - p) + p * p * n_var))
    cap = max(MIN_CAP, int(math.ceil(mean + sigmas * sd)))
    cap = -(-cap // 8) * 8  # round up to a multiple of 8: vector-friendly buffer sizes
    return min(cap, n_docs * seq_len)


def _counts(tokens, weight, n_vocab):
    """(B, L) tokens, (B, L, k) weights -> (B, n_vocab, k) weighted token counts."""
    B, L = tokens.shape
    seg = (jnp.arange(B, dtype=tokens.dtype)[:, None] * n_vocab + tokens).reshape(-1)
    out = jax.ops.segment_sum(weight.reshape(B * L, -1), seg, B * n_vocab)
    return out.reshape(B, n_vocab, -1)


def _fold_decoder(cfg: Config) -> bool:
    """Fold the decoder into the value tables (logits linear in the context: no LayerNorm).

    Per query that trades attn @ VE_h then @ D (2 d nv multiply-adds) for attn @ (VE_h D_h)
    (H nv^2), so it pays when H nv <= 2 d; uniform pooling always gains.
    """
    m = cfg.model
    if m.layernorm:
        return False
    return m.name == "embedding_only" or m.n_heads * cfg.data.n_vocab <= 2 * cfg.d_model


def key_counts(batch, cfg: Config, dtype=jnp.float32) -> jax.Array:
    """(B, nv) counts of each token among a document's key positions."""
    return _counts(batch.inputs, batch.key_mask.astype(dtype), cfg.data.n_vocab)[..., 0]


def vocab_tables(params, batch, cfg: Config, counts=None,
                 uniform: bool = False) -> tuple[dict, dict]:
    """Differentiable vocabulary tables (from params) and constant per-document data.

    counts: the documents' key_counts when the caller has them (a fixed evaluation set: a
    scatter over every position saved per call); then `batch` is not read. uniform: the
    attention is uniform over the keys whatever the query (the variant's UNIFORM_ATTENTION
    trait: W^Q, W^K held at zero), so every query of a document reads one pooled row, as for
    embedding_only ("doc_out", no "S").

    Unfolded: "S" (H, nv, nv) scores and "VE" (H, nv, dh) values (attention), "doc_out" (B, d)
    (embedding_only), "E" (nv, d) for the residual, "ln" params and "D" (d, nv) the decoder.
    Folded (_fold_decoder): no "D"; "VE" (H, nv, nv), "doc_out" (B, nv) and "E" (nv, nv) are
    already multiplied by the decoder, so they hold logit contributions.
    data (attention only): "logc" (B, nv) log key counts, NEG_INF where zero; "has_key" (B,).
    """
    m = cfg.model
    nv, d, H = cfg.data.n_vocab, cfg.d_model, m.n_heads
    E = params["E"]
    D = E.T if m.decoder == "tied" else params["W_dec"]
    VE = jnp.einsum("vd,hde->hve", E, params["WV"])
    fold = _fold_decoder(cfg)
    if fold:
        VE = jnp.einsum("hve,hew->hvw", VE, D.reshape(H, d // H, nv))
        tables = {}
    else:
        tables = {"D": D}
    if m.residual:
        tables["E"] = E @ D if fold else E
    if m.layernorm:
        tables["ln"] = params["ln"]
    c = key_counts(batch, cfg, E.dtype) if counts is None else counts.astype(E.dtype)
    data = {}
    if m.name == "embedding_only" or uniform:
        # the generic mean over an empty key set is 0 (weights w / max(sum w, 1)), as here;
        # so is softmax attention's over no keys (row_logits' has_key)
        w = c / jnp.maximum(c.sum(-1, keepdims=True), 1.0)
        tables["doc_out"] = jnp.einsum("bv,hvw->bw", w, VE) if fold else \
            jnp.einsum("bv,hve->bhe", w, VE).reshape(-1, d)
    else:
        QE = jnp.einsum("vd,hde->hve", E, params["WQ"])
        KE = jnp.einsum("vd,hde->hve", E, params["WK"])
        tables["S"] = jnp.einsum("hxe,hve->hxv", QE, KE) / math.sqrt(d // H)
        tables["VE"] = VE
        data["logc"] = jnp.where(c > 0, jnp.log(jnp.maximum(c, 1.0)), NEG_INF)
        data["has_key"] = c.sum(-1) > 0
    return tables, data


def row_logits(tables, data, doc, x, cfg: Config):
    """Logits (n, nv) of n queries given their document index doc (n,) and input token x (n,)."""
    m = cfg.model
    if "doc_out" in tables:  # pooled per document (embedding_only, uniform attention)
        out = tables["doc_out"][doc]
    else:
        scores = tables["S"][:, x, :] + data["logc"][doc][None]  # (H, n, nv)
        attn = jax.nn.softmax(scores, axis=-1)
        if "D" in tables:
            out = jnp.einsum("hnv,hve->nhe", attn, tables["VE"]).reshape(x.shape[0], -1)
        else:
            out = jnp.einsum("hnv,hvw->nw", attn, tables["VE"])
        # the generic model gives a query with no keys at all zero attention (not a uniform one)
        out = jnp.where(data["has_key"][doc][:, None], out, 0.0)
    if m.residual:
        out = out + tables["E"][x]
    if "D" not in tables:
        return out
    if m.layernorm:
        out = nn.LayerNorm().apply({"params": tables["ln"]}, out)
    return out @ tables["D"]


def _per_position(logits, y, loss: str):
    """Loss per row (n,), exactly as training.masked_loss computes it."""
    if loss == "ce":
        logz = jax.nn.logsumexp(logits, axis=-1)
        return logz - jnp.take_along_axis(logits, y[:, None], axis=-1)[:, 0]
    onehot = jax.nn.one_hot(y, logits.shape[-1], dtype=logits.dtype)
    return jnp.sum((logits - onehot) ** 2, axis=-1)


def _per_target(logits, loss: str):
    """(n, nv) logits -> (n, nv): the loss of each row against every possible target."""
    if loss == "ce":
        return jax.nn.logsumexp(logits, axis=-1, keepdims=True) - logits
    # ||l - e_y||^2 = ||l||^2 - 2 l_y + 1
    return jnp.sum(logits ** 2, axis=-1, keepdims=True) - 2.0 * logits + 1.0


def _make_chunked_sum(cfg: Config, L: int, cap: int, single: bool):
    """Sum of per-position losses over a flat (B L,) position mask, cap positions at a time.

    Returns total(tables, data, mask, rank, n, inputs, targets) with a custom VJP w.r.t. tables;
    rank is the 0-based rank of each masked position, n their number. single: cap covers every
    position, so one chunk always suffices and no loop is built.
    """
    loss = cfg.model.loss

    def chunk_sum(tables, data, k, mask, rank, n, inputs, targets):
        slot = rank - k * cap
        slot = jnp.where(mask & (slot >= 0) & (slot < cap), slot, cap)
        idx = jnp.zeros(cap, jnp.int32).at[slot].set(
            jnp.arange(mask.shape[0], dtype=jnp.int32), mode="drop")
        valid = jnp.arange(cap) < n - k * cap
        logits = row_logits(tables, data, idx // L, inputs[idx], cfg)
        return jnp.sum(jnp.where(valid, _per_position(logits, targets[idx], loss), 0.0))

    def over_chunks(step, init, n):
        """Fold step over chunks k = 0, 1, ... while k cap < n (usually one iteration)."""
        if single:
            return step((jnp.int32(0),) + init)[1:]
        return jax.lax.while_loop(lambda c: c[0] * cap < n, step, (jnp.int32(0),) + init)[1:]

    @jax.custom_vjp
    def total(tables, data, mask, rank, n, inputs, targets):
        args = (mask, rank, n, inputs, targets)
        step = lambda c: (c[0] + 1, c[1] + chunk_sum(tables, data, c[0], *args))
        return over_chunks(step, (jnp.float32(0),), n)[0]

    grad_chunk = jax.value_and_grad(chunk_sum)

    def fwd(tables, data, mask, rank, n, inputs, targets):
        # the gradient is accumulated here, in the same loop as the value; bwd only scales it
        args = (mask, rank, n, inputs, targets)

        def step(c):
            v, g = grad_chunk(tables, data, c[0], *args)
            return c[0] + 1, c[1] + v, jax.tree.map(jnp.add, c[2], g)

        zeros = jax.tree.map(jnp.zeros_like, tables)
        return over_chunks(step, (jnp.float32(0), zeros), n)

    def bwd(g_tables, ct):
        return (jax.tree.map(lambda t: ct * t, g_tables),) + (None,) * 6

    total.defvjp(fwd, bwd)
    return total


def fast_loss(params, batch, cfg: Config, cap: int | None = None) -> jax.Array:
    """training.loss_fn(params, batch, cfg), computed through vocabulary tables.

    batch: an MLMBatch-like object with (B, L) inputs, targets, selected, key_mask.
    cap: static chunk size for selected positions not showing [MASK] (default: default_cap).
    Returns the scalar mean loss over selected positions; jittable, vmappable, differentiable.
    """
    if not fast_supported(cfg):
        raise ValueError(f"fast_loss is not exact for this config: {FAST.why_not(cfg)}")
    B, L = batch.inputs.shape
    nv, MASK = cfg.data.n_vocab, cfg.data.MASK
    tables, data = vocab_tables(params, batch, cfg)
    sel = batch.selected
    dtype = params["E"].dtype

    # group 1: one row per document with query token [MASK] (any token when query-free)
    g1 = sel if _query_free(cfg) else sel & (batch.inputs == MASK)
    n1 = _counts(batch.targets, g1.astype(dtype)[..., None], nv)[..., 0]  # (B, nv)
    doc_logits = row_logits(tables, data, jnp.arange(B), jnp.full((B,), MASK), cfg)
    total = jnp.sum(n1 * _per_target(doc_logits, cfg.model.loss))

    # group 2: every other selected position, cap at a time
    if not _query_free(cfg):
        cap = default_cap(cfg, B, L) if cap is None else max(1, min(int(cap), B * L))
        g2 = (sel & ~g1).reshape(-1)
        rank = jnp.cumsum(g2.astype(jnp.int32)) - 1
        n2 = jnp.sum(g2.astype(jnp.int32))
        chunked = _make_chunked_sum(cfg, L, cap, single=cap >= B * L)
        total = total + chunked(tables, data, g2, rank, n2, batch.inputs.reshape(-1),
                                batch.targets.reshape(-1))
    return total / jnp.maximum(jnp.sum(sel.astype(dtype)), 1.0)
