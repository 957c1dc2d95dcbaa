"""A cost model of one training step, per implementation: which exact kernel is cheapest.

The bag-of-words kernels (fast.py, lean.py) work in vocabulary space: tables of nv x nv entries
(nv = n_vocab) and one row of nv logits per selected position; the definition (generic) works
per position: projections of every position, L x L attention, a decoder row per position. Which
is cheaper depends on the shapes: the kernels win by ~40x at the paper's defaults and lose by
~4x at nv = 6404 with width 104, so selection by preference alone has a cliff. The estimate is a
time: FLOPs of matrix products at a rate that grows with their inner size (small products run
far below a CPU's peak, large ones near it), element-wise work at a memory-bound rate and a
fixed cost per step, calibrated on the benchmark's scaling grid (scripts/bench.py,
results/bench.json "scaling"). It is a pure function of the config, so a run and its resume
select the same implementation; the grid checks that the choice stays within 1.5x of the
fastest measured implementation.
"""
from __future__ import annotations

import math

# The time model: FLOPs at a rate that grows with the inner size of the products (small
# products run far below a CPU's peak), element-wise work on L x L attention at a memory-bound
# rate, and a fixed cost per step (dispatch, the sampler, gathers, Adam). Fitted on the scaling
# grid of scripts/bench.py (2-core CPU); only the ranking of implementations matters.
PEAK = 120e9  # FLOP/s of large float32 products (2 cores)
HALF = 200.0  # inner size at which a product reaches half the peak
ELEMENTWISE = 20e9  # FLOP/s of softmax-and-scatter work (memory bound)
FIXED_S = {"lean": 4e-4, "fast": 1.2e-3, "generic": 1e-3}


def _rate(inner: float) -> float:
    return PEAK * inner / (inner + HALF)


def _rows(cfg) -> tuple[float, float]:
    """(group-1 rows, group-2 rows) of the kernels: one [MASK] row per document, and the cap of
    the other selected positions (what the kernel computes, not the mean)."""
    from topicdyn.models.fast import default_cap

    d = cfg.data
    cap = default_cap(cfg, d.batch_size, d.seq_len)
    return float(d.batch_size), float(cap)


def _parts(impl: str, cfg) -> list[tuple[float, float]]:
    """[(forward FLOPs, inner size or 0 for element-wise work)] of one step of one member."""
    d, m = cfg.data, cfg.model
    B, L, nv, dm = d.batch_size, d.seq_len, d.n_vocab, cfg.d_model
    H, nl = m.n_heads, m.n_layers
    query_free = m.name == "embedding_only" or m.attention == "uniform"
    if impl == "generic":
        n = B * L
        parts = [(n * nl * 3 * 2.0 * dm * dm, dm), (n * 2.0 * dm * nv, min(dm, nv))]
        attn = n * nl * (2.0 * L * dm if query_free else 4.0 * L * dm)
        parts.append((attn, dm))
        parts.append((n * nl * H * L * 6.0, 0))  # scores: mask, softmax
        parts.append((n * nv * 40.0, 0))  # the logits: softmax, gradient, passes over memory
        return parts
    r1, r2 = _rows(cfg)
    rows = r1 if query_free else r1 + r2
    if impl == "lean":
        # identity embedding / decoder and zero W^Q, W^K are constants: no product
        proj = (1 if query_free else 3) * (2.0 * nv * dm * dm if m.embedding == "trained" else 0)
        tables = [(proj, dm)]
        if not query_free:
            tables.append((2.0 * nv * nv * dm, dm))
        if m.decoder != "identity":
            tables.append((2.0 * nv * dm * nv, dm))
        # element-wise: the rows' softmax, and nv x nv tables written, scattered into, read
        return tables + [(2.0 * rows * nv * nv, nv), (rows * nv * 8.0 + nv * nv * 24.0, 0)]
    # fast: every product is taken (one-hot matrices too), per head; the decoder is folded into
    # the value table when H nv <= 2 d (no LayerNorm)
    fold = H * nv <= 2 * dm and not m.layernorm
    dh = dm // H
    proj = (1 if query_free else 3) * 2.0 * nv * dm * dm
    tables = [(proj, dm)]
    if not query_free:
        tables.append((2.0 * nv * nv * dm, dh))
    if fold:
        tables.append((2.0 * nv * dm * nv, dh))
        row = [(2.0 * rows * H * nv * nv, nv)]
    else:
        row = [(2.0 * rows * H * nv * dh, nv), (2.0 * rows * dm * nv, dm)]
    return tables + row + [(rows * H * nv * 8.0 + H * nv * nv * 8.0, 0)]


def step_flops(impl: str, cfg) -> float:
    """Estimated FLOPs of one training step of one member (forward + backward = 3 x forward)
    through implementation impl ("lean", "fast" or "generic")."""
    return 3.0 * sum(f for f, _ in _parts(impl, cfg))


def step_cost(impl: str, cfg) -> float:
    """Estimated seconds of one step of one member on the benchmark's 2-core CPU (only the
    ranking of implementations is used)."""
    t = sum(3.0 * f / (_rate(k) if k else ELEMENTWISE) for f, k in _parts(impl, cfg))
    return t + FIXED_S[impl]


def cheapest(impls, cfg) -> str:
    """The implementation of impls with the lowest step_cost (ties: the first)."""
    return min(impls, key=lambda i: (step_cost(i, cfg), list(impls).index(i)))


def describe(impls, cfg) -> dict:
    """{impl: estimated GFLOP per step} for the record (config.json, topicdyn info)."""
    return {i: round(step_flops(i, cfg) / 1e9, 4 if step_flops(i, cfg) < 1e9 else 2)
            for i in impls if math.isfinite(step_flops(i, cfg))}
