"""make_chunk_fn (a sampler program, then a training program, in blocks) against a plain python
loop of steps.

The reference re-runs training one member and one step at a time with make_step (which samples
train_batch(seed, t) inside the step), and evaluates the generic loss (model.impl=generic) at
the parameters before each step. A chunk must report, at row j, the loss of step start + j on
that step's own batch, leave rows >= n at zero, and end at the loop's parameters.
"""
from __future__ import annotations

import jax
import numpy as np
import pytest

import topicdyn.training as training
from topicdyn.config import apply_overrides, preset
from topicdyn.training import (ensemble_seeds, init_state, loss_fn, make_chunk_fn,
                               make_step, train_batch)

# compile time dominates: classic emitters, no backend optimisation (same float32 arithmetic)
FAST = {"xla_cpu_use_fusion_emitters": False, "xla_backend_optimization_level": 0}

CHUNK = 16
TINY = ["data.T=4", "data.v=5", "data.N_min=6", "data.N_max=10", "data.batch_size=4",
        "data.prior=k_topics", "data.k_weights=equal", "mask.p_mask=0.3", "optim.lr=0.05",
        f"train.chunk={CHUNK}", "train.n_seeds=2", "train.seed=3"]
START, N = 5, 13  # N is not a multiple of the sampling block (SAMPLE, below), and N < CHUNK
SAMPLE = 5
N_OVER, N_LAST = 40, 3  # then a chunk asked for more steps than it holds, then a short one
STEPS = N + CHUNK + N_LAST


def _member(tree, i):
    return jax.tree.map(lambda x: x[i], tree)


def _copy(tree):  # the chunk donates its state argument
    return jax.tree.map(np.array, tree)


def _close(want, got, what, rtol=1e-4, atol=1e-6):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=rtol, atol=atol,
                               err_msg=what)


@pytest.fixture(scope="module")
def run():
    cfg = preset("F", TINY)
    seeds = ensemble_seeds(cfg)
    state0 = init_state(cfg, seeds)
    with pytest.MonkeyPatch.context() as mp:  # the same program, compiled faster
        mp.setattr(training, "compile_options", lambda: FAST)
        # blocks of SAMPLE steps: a chunk spans several sampler and training dispatches
        mp.setattr(training, "steps_per_dispatch", lambda c, m: SAMPLE)
        assert N % SAMPLE != 0 and N > SAMPLE and CHUNK > N
        chunk = make_chunk_fn(cfg)
        s1, m1 = chunk(_copy(state0), seeds, np.int32(START), np.int32(N))
        s_empty, m_empty = chunk(_copy(s1), seeds, np.int32(START + N), np.int32(0))
        s2, m2 = chunk(_copy(s1), seeds, np.int32(START + N), np.int32(N_OVER))
        s3, m3 = chunk(_copy(s2), seeds, np.int32(START + N + CHUNK), np.int32(N_LAST))

    # the reference: one member, one step at a time
    gen = apply_overrides(cfg, ["model.impl=generic"])
    step = jax.jit(make_step(cfg), compiler_options=FAST)
    ref_loss = jax.jit(lambda p, s, t: loss_fn(p, train_batch(s, t, gen), gen),
                       compiler_options=FAST)
    loop = []
    for i, seed in enumerate(np.asarray(seeds)):
        st, rows, params = _member(state0, i), [], {}
        for k in range(STEPS):
            t = START + k
            generic = float(ref_loss(st.params, seed, t))
            st, m = step(st, seed, t)
            rows.append((generic, jax.device_get(m)))
            params[k + 1] = st.params
        loop.append((rows, params))
    return dict(chunks=[jax.device_get(m) for m in (m1, m2, m3)], states=(s1, s2, s3),
                empty=(s_empty, jax.device_get(m_empty)), loop=loop, n_seeds=len(seeds))


def _check_rows(metrics, loop, offset, n, what):
    """Rows 0..n-1 of a chunk's metrics are the loop's steps offset..offset+n-1."""
    for i, (rows, _) in enumerate(loop):
        generic = [rows[offset + j][0] for j in range(n)]
        _close(generic, metrics["loss"][:n, i], f"{what} member {i}: loss vs generic loss_fn")
        for j in range(n):
            m = rows[offset + j][1]
            for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(metrics),
                                    jax.tree.leaves(m)):
                _close(y, x[j, i], f"{what} member {i} row {j} {jax.tree_util.keystr(path)}",
                       atol=1e-5)


def _check_params(state, loop, k, what):
    for i, (_, params) in enumerate(loop):
        for (path, want), got in zip(jax.tree_util.tree_leaves_with_path(params[k]),
                                     jax.tree.leaves(_member(state.params, i))):
            _close(want, got, f"{what} member {i} {jax.tree_util.keystr(path)}", atol=1e-5)


def _check_zero_rows(metrics, n, n_seeds, what):
    for path, x in jax.tree_util.tree_leaves_with_path(metrics):
        assert x.shape == (CHUNK, n_seeds), (what, path)
        assert not np.any(x[n:]), f"{what}: rows >= {n} of {jax.tree_util.keystr(path)} not zero"
        assert np.all(np.isfinite(x[:n])) and np.all(x[:n] != 0), (what, path)


def test_chunk_rows_are_the_steps_of_a_plain_loop(run):
    m1 = run["chunks"][0]
    assert "loss" in m1 and "grad_norm" in m1
    _check_zero_rows(m1, N, run["n_seeds"], "first chunk")
    _check_rows(m1, run["loop"], 0, N, "first chunk")
    _check_params(run["states"][0], run["loop"], N, "after the first chunk")
    # every step read a different batch, and the members different ones
    losses = np.asarray(m1["loss"][:N])
    assert len(np.unique(np.round(losses, 6))) == losses.size


def test_n_beyond_capacity_then_a_short_chunk(run):
    m2, m3 = run["chunks"][1:]
    _check_zero_rows(m2, CHUNK, run["n_seeds"], "over-full chunk")  # capped at CHUNK steps
    _check_rows(m2, run["loop"], N, CHUNK, "over-full chunk")
    _check_params(run["states"][1], run["loop"], N + CHUNK, "after the over-full chunk")
    _check_zero_rows(m3, N_LAST, run["n_seeds"], "short chunk")
    _check_rows(m3, run["loop"], N + CHUNK, N_LAST, "short chunk")
    _check_params(run["states"][2], run["loop"], STEPS, "after the short chunk")


def test_empty_chunk_changes_nothing(run):
    state, metrics = run["empty"]
    assert not any(np.any(x) for x in jax.tree.leaves(metrics))
    for a, b in zip(jax.tree.leaves(run["states"][0]), jax.tree.leaves(state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
