"""The lean training path: the exact fast loss (models/fast.py) of the common variants
(cross-entropy, no residual, no LayerNorm, one head) with a hand-written backward pass.

Every row sum is a matrix-vector product (XLA:CPU emits slow code for reductions of products);
group 1 and the first chunk of group 2 run as one block of rows; and the matrices the variant
holds fixed are taken as the constants they are in training (identity embedding/decoder: no
matmul; zero W^Q, W^K: uniform attention, so every selected position of a document shares one
row). tests/test_lean.py checks losses and gradients against the generic model.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from topicdyn.config import Config
from topicdyn.models.fast import NEG_INF, default_cap
from topicdyn.models.kernels import LEAN, exact

# the lean training path sizes its first block at mean + 3.5 sd: the overflow loop then runs on
# ~2 steps in 10^4, and the rows no step needs cost less
LEAN_CAP_SIGMAS = 3.5


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
    """True when lean_loss is exact for cfg (kernels.LEAN's declaration)."""
    return exact(LEAN, cfg)


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

    names = ("WV",) if query_free else ("WQ", "WK", "WV")

    def fwd(mats):
        E = mats.get("E")
        if E is None:
            QE, KE, VE = (None, None, mats["WV"][:nv]) if query_free else (
                mats["WQ"][:nv], mats["WK"][:nv], mats["WV"][:nv])
        else:  # one product E [W^Q W^K W^V] instead of three (fewer, larger kernels)
            EW = E @ jnp.concatenate([mats[n] for n in names], axis=1)
            parts = jnp.split(EW, len(names), axis=1)
            QE, KE, VE = (None, None, parts[0]) if query_free else parts
        D = (None if E is None else E.T) if tied else mats.get("W_dec")  # E None: identity
        VE2 = VE[:, :nv] if D is None else VE @ D
        if query_free:
            return (None, VE2), (VE, D, None, None)
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
        if E is None:
            for n, dx in dX.items():
                g[n] = jnp.zeros_like(mats[n]).at[:nv].set(dx) if d > nv else dx
        else:  # X = E W for the stacked W = [W^Q W^K W^V]: dW = E^T dX, dE = dX W^T
            dXs = jnp.concatenate([dX[n] for n in names], axis=1)
            for n, gw in zip(names, jnp.split(E.T @ dXs, len(names), axis=1)):
                g[n] = gw
            dE = dXs @ jnp.concatenate([mats[n] for n in names], axis=1).T
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


PREFIX_BLOCK = 64  # block of the two-level prefix sum (row_ranks)


def _tri(n: int, strict: bool = False) -> jax.Array:
    return jnp.triu(jnp.ones((n, n), jnp.float32), 1 if strict else 0)


def row_ranks(g: jax.Array) -> jax.Array:
    """0-based rank of each True of g (B, L) in row-major order (B L,), as int32.

    A prefix sum in two levels of matrix products over blocks of PREFIX_BLOCK positions: inside
    each block, then over the block totals (again in blocks): linear in B L (a triangular
    product over whole rows costs B L^2: 0.46 of 0.71 GFLOP per step at N ~ 2000). Exact while
    the count stays below 2^24 (float32 integers; B L <= MAX_BATCH MAX_LENGTH is)."""
    b = PREFIX_BLOCK
    n = g.size
    npad = -(-n // b) * b
    x = jnp.pad(g.reshape(-1).astype(jnp.float32), (0, npad - n)).reshape(-1, b)
    within = x @ _tri(b)  # (nb, b) inclusive prefix inside each block
    tot = within[:, -1]  # (nb,) block totals
    nb = tot.shape[0]
    mpad = -(-nb // b) * b
    t2 = jnp.pad(tot, (0, mpad - nb)).reshape(-1, b)
    excl = t2 @ _tri(b, strict=True)  # exclusive prefix of the totals inside each block
    before = (t2 @ jnp.ones((b,), jnp.float32)) @ _tri(mpad // b, strict=True)
    offset = (excl + before[:, None]).reshape(-1)[:nb]  # totals of every earlier block
    return (within + offset[:, None]).reshape(-1)[:n].astype(jnp.int32) - 1


def lean_loss(params, batch, cfg: Config, cap: int | None = None,
              const: frozenset[str] = frozenset()) -> jax.Array:
    """training.loss_fn for lean_supported configs, with the fixed matrices named in `const`
    (see structural_constants) taken as their constants. Exact (tests/test_lean.py)."""
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
    rank = row_ranks(g2)
    n2 = rank[-1] + 1  # the inclusive prefix at the last position is the count
    d_all = jnp.repeat(jnp.arange(B, dtype=jnp.int32), L)
    group2 = (n2, inputs.reshape(-1), d_all, targets.reshape(-1), g2.reshape(-1), rank)
    return _lean_rows_sum(S, VE2, (c, has_key, n1), group2, cap, MASK) / n_sel
