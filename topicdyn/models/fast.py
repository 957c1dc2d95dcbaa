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

NEG_INF = -1e30  # same mask value as the generic model: exp underflows to exactly 0
MIN_CAP = 16
CAP_SIGMAS = 10.0
# the lean training path sizes its first block at mean + 3.5 sd: the overflow loop then runs on
# ~2 steps in 10^4, and the rows no step needs cost less
LEAN_CAP_SIGMAS = 3.5

_SUPPORTED = ("attention", "embedding_only")


def fast_supported(cfg: Config) -> bool:
    """True when fast_loss reproduces training.loss_fn for this config."""
    m = cfg.model
    return (m.name in _SUPPORTED and m.loss in ("ce", "squared")
            and m.decoder in ("trained", "identity", "tied"))


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


def _tables(params, batch, cfg: Config) -> tuple[dict, dict]:
    """Differentiable vocabulary tables (from params) and constant per-document data.

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
    key_w = batch.key_mask.astype(E.dtype)
    data = {}
    if m.name == "embedding_only":
        c = _counts(batch.inputs, key_w, nv)[..., 0]
        # the generic mean over an empty key set is 0 (weights w / max(sum w, 1)), as here
        w = c / jnp.maximum(c.sum(-1, keepdims=True), 1.0)
        tables["doc_out"] = jnp.einsum("bv,hvw->bw", w, VE) if fold else \
            jnp.einsum("bv,hve->bhe", w, VE).reshape(-1, d)
    else:
        QE = jnp.einsum("vd,hde->hve", E, params["WQ"])
        KE = jnp.einsum("vd,hde->hve", E, params["WK"])
        tables["S"] = jnp.einsum("hxe,hve->hxv", QE, KE) / math.sqrt(d // H)
        tables["VE"] = VE
        c = _counts(batch.inputs, key_w, nv)[..., 0]
        data["logc"] = jnp.where(c > 0, jnp.log(jnp.maximum(c, 1.0)), NEG_INF)
        data["has_key"] = c.sum(-1) > 0
    return tables, data


def _row_logits(tables, data, doc, x, cfg: Config):
    """Logits (n, nv) of n queries given their document index doc (n,) and input token x (n,)."""
    m = cfg.model
    if m.name == "embedding_only":
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
        logits = _row_logits(tables, data, idx // L, inputs[idx], cfg)
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
        raise ValueError(f"fast_loss does not handle this config (model {cfg.model.name!r})")
    B, L = batch.inputs.shape
    nv, MASK = cfg.data.n_vocab, cfg.data.MASK
    tables, data = _tables(params, batch, cfg)
    sel = batch.selected
    dtype = params["E"].dtype

    # group 1: one row per document with query token [MASK] (any token when query-free)
    g1 = sel if _query_free(cfg) else sel & (batch.inputs == MASK)
    n1 = _counts(batch.targets, g1.astype(dtype)[..., None], nv)[..., 0]  # (B, nv)
    doc_logits = _row_logits(tables, data, jnp.arange(B), jnp.full((B,), MASK), cfg)
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


# ---- lean training path ------------------------------------------------------------------------
# The training step of the common variants (cross-entropy, no residual, no LayerNorm, one head)
# with a hand-written backward pass for the per-row part: every row sum is a matrix-vector product
# (XLA:CPU emits slow code for reductions of products), group 1 and the first chunk of group 2 run
# as one block of rows, and with `structural=True` the matrices the variant holds fixed are taken
# as the constants they are in training (identity embedding/decoder: no matmul; zero W^Q, W^K:
# uniform attention, so every selected position of a document shares one row).

def structural_constants(cfg: Config, trainable: set[str]) -> frozenset[str]:
    """Fixed matrices whose training value is a known constant: "E" and "W_dec" (identity),
    "QK" (zero W^Q and W^K). `trainable`: groups the optimiser may move (then not constant)."""
    m, out = cfg.model, set()
    if m.embedding == "onehot" and "embedding" not in trainable:
        out.add("E")
    if m.decoder == "identity" and "decoder" not in trainable:
        out.add("W_dec")
    if m.name == "attention" and m.attention == "uniform" and not {"query", "key"} & trainable:
        out.add("QK")
    return frozenset(out)


def lean_supported(cfg: Config) -> bool:
    m = cfg.model
    return (m.name in _SUPPORTED and m.loss == "ce" and not m.residual and not m.layernorm
            and m.n_heads == 1)


def _ones(n, dtype=jnp.float32):
    return jnp.ones((n,), dtype)


def _lean_tables(params, cfg: Config, const: frozenset[str], query_free: bool):
    """(S or None, VE2): scores S = (E W^Q)(E W^K)^T / sqrt(d) and values folded with the decoder
    VE2 = E W^V D, both (nv, nv); identity matrices in `const` are slices instead of matmuls.

    Trained matrices go through _table_products, whose backward pass is written out: autodiff's
    own transposes left XLA:CPU computing some gradients transposed, and every Adam update then
    paid a strided transpose."""
    nv, d = cfg.data.n_vocab, cfg.d_model
    names = ["WV"] if query_free else ["WQ", "WK", "WV"]
    mats = {n: params[n][0] for n in names}
    if "E" not in const:
        mats["E"] = params["E"]
    tied = cfg.model.decoder == "tied"
    if not tied and "W_dec" not in const:
        mats["W_dec"] = params["W_dec"]
    return _table_products(mats, nv, d, query_free, tied)


def _table_products(mats, nv, d, query_free, tied):
    scale = 1.0 / math.sqrt(d)

    def fwd(mats):
        E = mats.get("E")
        emb = (lambda W: W[:nv]) if E is None else (lambda W: E @ W)
        VE = emb(mats["WV"])
        D = (None if E is None else E.T) if tied else mats.get("W_dec")  # E None: identity
        VE2 = VE[:, :nv] if D is None else VE @ D
        if query_free:
            return (None, VE2), (VE, D, None, None)
        QE, KE = emb(mats["WQ"]), emb(mats["WK"])
        S = (QE @ KE.T) * jnp.float32(scale)
        return (S, VE2), (VE, D, QE, KE)

    @jax.custom_vjp
    def f(mats):
        return fwd(mats)[0]

    def f_fwd(mats):
        out, (VE, D, QE, KE) = fwd(mats)
        return out, (mats, VE, D, QE, KE)

    def f_bwd(res, ct):
        mats, VE, D, QE, KE = res
        E = mats.get("E")
        dS, dVE2 = ct
        g = {}
        # VE2 = VE D
        if D is None:
            dVE = jnp.zeros((nv, d), dVE2.dtype).at[:, :nv].set(dVE2) if d > nv else dVE2
        else:
            dVE = dVE2 @ D.T
            if not tied:
                g["W_dec"] = VE.T @ dVE2
        dX = {"WV": dVE}
        if not query_free:
            dS = dS * jnp.float32(scale)
            dX["WQ"], dX["WK"] = dS @ KE, dS.T @ QE
        dE = None
        for n, dx in dX.items():  # X = E W: dW = E^T dX, dE += dX W^T
            if E is None:
                g[n] = jnp.zeros_like(mats[n]).at[:nv].set(dx) if d > nv else dx
            else:
                g[n] = E.T @ dx
                t = dx @ mats[n].T
                dE = t if dE is None else dE + t
        if E is not None:
            if tied:  # VE2 = VE E^T: the decoder's share of dE
                dE = dE + dVE2.T @ VE
            g["E"] = dE
        return ({n: g[n] for n in mats},)

    f.defvjp(f_fwd, f_bwd)
    return f(mats)


def _softmax_rows(s):
    """Row softmax with the normaliser as a matrix-vector product; returns (p, log Z)."""
    m = jnp.max(s, axis=-1, keepdims=True)
    e = jnp.exp(s - m)
    z = e @ _ones(s.shape[-1], s.dtype)
    return e / z[:, None], m[:, 0] + jnp.log(z)


def _attention_rows(S, c, has_key, q, doc):
    """Unnormalised attention e (R, nv) of rows (query q, document doc) and row scales r (0 for
    a query without keys): softmax(S[q] + log c[doc]) = r e."""
    s = S[q] + jnp.where(c > 0, jnp.log(jnp.maximum(c, 1.0)), NEG_INF)[doc]
    e = jnp.exp(s - jnp.max(s, axis=-1, keepdims=True))
    return e, jnp.where(has_key[doc], 1.0 / (e @ _ones(S.shape[-1])), 0.0)


def _rows_value_and_grad(S, VE2, c, has_key, q, doc, Wt, attn_fixed=None):
    """Sum over rows r of sum_y Wt[r, y] * CE(logits_r, y), and its gradient w.r.t. (S, VE2).

    Row r: query token q[r] of document doc[r] with key counts c[doc]; attention
    a = softmax(S[q] + log c[doc]) (or the given attn_fixed rows when attention does not depend on
    the parameters), logits = a @ VE2. The attention is kept as e * r (row scale r), so the
    matrices the products transpose are materialised kernel outputs, not fused expressions."""
    nv = VE2.shape[-1]
    ones = _ones(nv)
    if attn_fixed is None:
        e, r = _attention_rows(S, c, has_key, q, doc)
    else:
        e, r = attn_fixed, jnp.ones(attn_fixed.shape[:1], VE2.dtype)
    logits = r[:, None] * (e @ VE2)
    p, lse = _softmax_rows(logits)
    wsum = Wt @ ones
    value = jnp.dot(wsum, lse) - jnp.sum((Wt * logits) @ ones)
    dl = wsum[:, None] * p - Wt  # d value / d logits
    dVE2 = e.T @ (r[:, None] * dl)
    if attn_fixed is not None:
        return value, None, dVE2
    da = dl @ VE2.T  # d value / d attention; softmax backward with a = r e:
    ds = (r[:, None] * e) * (da - (r * ((e * da) @ ones))[:, None])
    dS = jnp.zeros(S.shape, S.dtype).at[q].add(ds)
    return value, dS, dVE2


def _lean_rows_sum(S, VE2, rows, group2, cap: int, MASK: int):
    """Sum of the row losses (custom VJP w.r.t. S and VE2).

    rows: (c, has_key, n1): key counts and group-1 target counts per document. group2:
    (n2, x, doc, y, mask, rank) over the flat B L positions: the group-2 positions and their
    ranks. A loop takes cap group-2 positions per iteration; iteration 0 also has the B group-1
    rows (query [MASK], token id MASK), and further iterations (needed with probability ~2e-4) reuse the same code, so it
    exists, and is compiled, once."""
    c, has_key, n1 = rows
    n2, x_all, d_all, y_all, mask, rank = group2
    B, nv = n1.shape

    def total_and_grads(S, VE2):
        def body(carry):
            k, v, dS, dV = carry
            slot = rank - k * cap
            slot = jnp.where(mask & (slot >= 0) & (slot < cap), slot, cap)
            idx = jnp.zeros(cap, jnp.int32).at[slot].set(
                jnp.arange(mask.shape[0], dtype=jnp.int32), mode="drop")
            ok = jnp.arange(cap) < n2 - k * cap
            W2 = jnp.where(ok[:, None], y_all[idx][:, None] == jnp.arange(nv), False)
            Wt = jnp.concatenate([jnp.where(k == 0, n1, 0.0), W2.astype(VE2.dtype)])
            q = jnp.concatenate([jnp.full((B,), MASK, jnp.int32), x_all[idx]])
            doc = jnp.concatenate([jnp.arange(B, dtype=jnp.int32), d_all[idx]])
            vk, dSk, dVk = _rows_value_and_grad(S, VE2, c, has_key, q, doc, Wt)
            return k + 1, v + vk, dS + dSk, dV + dVk

        init = (jnp.int32(0), jnp.float32(0.0), jnp.zeros_like(S), jnp.zeros_like(VE2))
        _, v, dS, dV = jax.lax.while_loop(lambda cr: (cr[0] == 0) | (cr[0] * cap < n2), body,
                                          init)
        return v, dS, dV

    @jax.custom_vjp
    def f(S, VE2):
        return total_and_grads(S, VE2)[0]

    def fwd(S, VE2):
        v, dS, dV = total_and_grads(S, VE2)
        return v, (dS, dV)

    def bwd(res, ct):
        dS, dV = res
        return ct * dS, ct * dV

    f.defvjp(fwd, bwd)
    return f(S, VE2)


def _lean_fixed_sum(VE2, a, Wt):
    """Query-free variant: sum of the row losses for fixed attention rows a (custom VJP)."""

    @jax.custom_vjp
    def f(VE2):
        return _rows_value_and_grad(None, VE2, None, None, None, None, Wt, attn_fixed=a)[0]

    def fwd(VE2):
        v, _, dV = _rows_value_and_grad(None, VE2, None, None, None, None, Wt, attn_fixed=a)
        return v, dV

    def bwd(dV, ct):
        return (ct * dV,)

    f.defvjp(fwd, bwd)
    return f(VE2)


def _row_ranks(g: jax.Array) -> jax.Array:
    """0-based rank of each True of g (B, L) in row-major order (B L,), as int32; a prefix sum
    written as matrix products (XLA:CPU's cumulative sums are quadratic in the length)."""
    B, L = g.shape
    x = g.astype(jnp.float32)
    within = x @ jnp.triu(jnp.ones((L, L), jnp.float32))  # inclusive prefix over the row
    before = within[:, -1] @ jnp.triu(jnp.ones((B, B), jnp.float32), 1)  # earlier rows' totals
    return (within + before[:, None]).reshape(-1).astype(jnp.int32) - 1


def lean_loss(params, batch, cfg: Config, cap: int | None = None,
              const: frozenset[str] = frozenset()) -> jax.Array:
    """training.loss_fn for lean_supported configs, with the fixed matrices named in `const`
    (see structural_constants) taken as their constants. Exact (tests/test_fast.py)."""
    if not lean_supported(cfg):
        raise ValueError("lean_loss does not handle this config")
    B, L = batch.inputs.shape
    nv, MASK = cfg.data.n_vocab, cfg.data.MASK
    query_free = cfg.model.name == "embedding_only" or "QK" in const
    S, VE2 = _lean_tables(params, cfg, const, query_free)
    sel, inputs, targets = batch.selected, batch.inputs, batch.targets
    dtype = VE2.dtype
    n_sel = jnp.maximum(jnp.sum(sel.astype(dtype)), 1.0)
    g1 = sel if query_free else sel & (inputs == MASK)
    # key counts (B, nv) and group-1 target counts (B, nv) in one segment sum
    docs = jnp.arange(B, dtype=jnp.int32)[:, None] * nv
    ids = jnp.concatenate([(docs + inputs).reshape(-1), (B * nv + docs + targets).reshape(-1)])
    w = jnp.concatenate([batch.key_mask.reshape(-1), g1.reshape(-1)]).astype(dtype)
    counts = jax.ops.segment_sum(w, ids, 2 * B * nv).reshape(2, B, nv)
    c, n1 = counts[0], counts[1]
    if query_free:
        # the generic mean over an empty key set is 0 (weights w / max(sum w, 1)), as here
        a = c / jnp.maximum(c @ _ones(nv), 1.0)[:, None]
        return _lean_fixed_sum(VE2, a, n1) / n_sel
    has_key = (c @ _ones(nv)) > 0
    cap = default_cap(cfg, B, L, LEAN_CAP_SIGMAS) if cap is None else max(1, min(int(cap), B * L))
    g2 = sel & ~g1
    rank = _row_ranks(g2)
    n2 = rank[-1] + 1  # the inclusive prefix at the last position is the count
    d_all = jnp.repeat(jnp.arange(B, dtype=jnp.int32), L)
    group2 = (n2, inputs.reshape(-1), d_all, targets.reshape(-1), g2.reshape(-1), rank)
    return _lean_rows_sum(S, VE2, (c, has_key, n1), group2, cap, MASK) / n_sel
