"""fast_loss must equal the generic loss (training.loss_fn) and have the same gradients.

Parameters are the model's own init (one-hot, identity, topic-block, zero W^Q/W^K kept exact)
with every trained matrix drawn at std 0.5, then, in a second pass, every leaf perturbed, so the
fixed matrices are generic too. Small vocabularies (T=4, v=5: 24 token ids), short documents and
few distinct configurations keep the XLA compilations (the cost of these tests) down.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from topicdyn.config import apply_overrides, preset
from topicdyn.masking import sample_batch
from topicdyn.models import get_model, get_variant
from topicdyn.models.fast import MIN_CAP, default_cap, fast_loss, fast_supported
from topicdyn.training import loss_fn

# the topic prior never matters to the loss; k_topics/equal just compiles faster than Dirichlet
SMALL = ["data.T=4", "data.v=5", "data.N_min=20", "data.N_max=30", "data.batch_size=8",
         "data.prior=k_topics", "data.k_weights=equal"]
# more selected positions that do not show [MASK]: the chunked path gets real work
MIXED = ["mask.p_mask=0.3", "mask.p_replace_mask=0.4", "mask.p_replace_random=0.3",
         "mask.p_keep=0.3"]

# every preset and switch appears at least once; each case costs two compilations, so switches
# are combined rather than tested one at a time
CASES = {
    "E-residual-keys-all": ("E", ["model.residual=true", "mask.key_set=all"]),
    "V-squared-keys-all": ("V", ["model.loss=squared", "mask.key_set=all"]),
    "A-heads2-res-ln-mixed": ("A", ["model.n_heads=2", "model.residual=true",
                                    "model.layernorm=true"] + MIXED),
    "F": ("F", []),
    # decoder folded into the value tables (H nv <= 2 d); the reference vocabulary of 104 ids
    "F-full-vocab-zipf-heads2-tied-no-start-end": (
        "F", ["data.T=10", "data.v=10", "data.topic_words=zipf", "model.d_model=104",
              "model.n_heads=2", "model.decoder=tied", "data.start_end=false"]),
    # decoder not folded, no LayerNorm (H nv > 2 d)
    "F-d16-heads2-residual-mixed": ("F", ["model.d_model=16", "model.n_heads=2",
                                          "model.residual=true"] + MIXED),
    "emb-only-residual-squared-mixed": ("F", ["model.name=embedding_only",
                                              "model.residual=true", "model.loss=squared"]
                                        + MIXED),
    "emb-only-ln-tied-keys-all": ("F", ["model.name=embedding_only", "model.layernorm=true",
                                        "model.decoder=tied", "mask.key_set=all"]),
}

# these cases always run with a tiny cap, so several chunks (the overflow path) are exercised;
# the others use the default cap and fit in one chunk
OVERFLOW_CAP = {"A-heads2-res-ln-mixed": 2, "emb-only-residual-squared-mixed": 2}

_sample = jax.jit(sample_batch, static_argnums=(1, 2, 3))


def _cfg(case):
    name, extra = CASES[case]
    return preset(name, SMALL + extra)


@functools.lru_cache(maxsize=None)
def _init(model_name):
    return jax.jit(get_model(model_name).init, static_argnums=1)


def _params(cfg, seed, std=0.5):
    """The model's init with its trained matrices redrawn at `std` (numpy: no RNG compile)."""
    zero_init = apply_overrides(cfg, ["model.init_scale=0"])
    params = _init(cfg.model.name)(jax.random.PRNGKey(0), zero_init)
    variant = get_variant(cfg.model.name)
    rng, fixed = np.random.default_rng(seed), variant.fixed_groups(cfg) | {"layernorm"}
    return {name: sub if variant.param_group((name,)) in fixed else
            jnp.asarray(std * rng.standard_normal(sub.shape), sub.dtype)
            for name, sub in params.items()}


# host-side numpy for the small array edits below: every new eager jnp op costs a compilation
def _perturb(params, seed, scale=0.3):
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda x: jnp.asarray(np.asarray(x) + scale * rng.standard_normal(x.shape), x.dtype),
        params)


def _edit(batch, **fields):
    """batch with some fields replaced by numpy arrays."""
    return batch._replace(**{k: jnp.asarray(v) for k, v in fields.items()})


def _stack(a, b):
    return jax.tree.map(lambda x, y: jnp.asarray(np.stack([x, y])), a, b)


def _batch(cfg, seed, batch=None):
    # RBG keys: the same sampler, a much cheaper compile than threefry
    key = jax.random.key(seed, impl="rbg")
    return _sample(key, cfg.data, cfg.mask, batch or cfg.data.batch_size)


# compiled once per config (and cap) and shared by the tests below
@functools.lru_cache(maxsize=None)
def _generic(cfg):
    return jax.jit(jax.value_and_grad(lambda p, b: loss_fn(p, b, cfg)))


@functools.lru_cache(maxsize=None)
def _fast(cfg, cap):
    return jax.jit(jax.value_and_grad(lambda p, b: fast_loss(p, b, cfg, cap=cap)))


def _assert_close(want, got, what):
    """Leaf-wise: rtol 1e-4, atol 1e-5 relative to the leaf's largest entry (float32 sums)."""
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(want), jax.tree.leaves(got)):
        x, y = np.asarray(x), np.asarray(y)
        atol = 1e-5 * max(1.0, float(np.abs(x).max()))
        np.testing.assert_allclose(y, x, rtol=1e-4, atol=atol,
                                   err_msg=f"{what} {jax.tree_util.keystr(path)}")


def _check(case, params, batch, what):
    cfg, cap = _cfg(case), OVERFLOW_CAP.get(case)
    (lg, gg), (lf, gf) = _generic(cfg)(params, batch), _fast(cfg, cap)(params, batch)
    assert np.isfinite(float(lg)) and float(lg) > 0
    _assert_close(lg, lf, f"{what} loss")
    _assert_close(gg, gf, f"{what} grad")


def _n_chunked(batch, cfg):
    """Selected positions outside the per-document [MASK] group."""
    return int((np.asarray(batch.selected) & (np.asarray(batch.inputs) != cfg.data.MASK)).sum())


@pytest.mark.parametrize("case", list(CASES))
def test_matches_generic_loss_and_grads(case):
    cfg = _cfg(case)
    assert fast_supported(cfg)
    params, batch = _params(cfg, 1), _batch(cfg, 2)
    assert _n_chunked(batch, cfg) > 0
    _check(case, params, batch, f"{case} init params")
    _check(case, _perturb(params, 3), batch, f"{case} perturbed params")


@pytest.mark.parametrize("case", list(OVERFLOW_CAP))
def test_overflowing_cap_stays_exact(case):
    cfg = _cfg(case)
    params, batch = _perturb(_params(cfg, 4), 5), _batch(cfg, 6)
    assert _n_chunked(batch, cfg) > 4 * OVERFLOW_CAP[case]  # several loop iterations
    _check(case, params, batch, f"{case} cap={OVERFLOW_CAP[case]}")


def test_vmap_and_scan_with_members_needing_different_chunk_counts():
    """Ensemble axis: one member overflows cap several times, the other fits; inside scan."""
    cfg = _cfg("F-d16-heads2-residual-mixed")
    p0 = _params(cfg, 7)
    p1 = _perturb(p0, 8)
    b0 = _batch(cfg, 9)
    first_doc = np.arange(b0.inputs.shape[0])[:, None] < 1
    b1 = _edit(b0, selected=np.asarray(b0.selected) & first_doc)
    cap = 8
    assert _n_chunked(b0, cfg) > 3 * cap and 0 < _n_chunked(b1, cfg) <= cap
    params, batches, scales = _stack(p0, p1), _stack(b0, b1), (1.0, 0.5)
    vg = jax.vmap(jax.value_and_grad(lambda p, b: fast_loss(p, b, cfg, cap=cap)))

    def body(carry, scale):
        return carry, vg(jax.tree.map(lambda x: x * scale, params), batches)

    got = jax.jit(lambda: jax.lax.scan(body, None, jnp.array(scales))[1])()
    for i, s in enumerate(scales):
        for m, (p, b) in enumerate([(p0, b0), (p1, b1)]):
            want = _generic(cfg)(jax.tree.map(lambda x: x * s, p), b)
            _assert_close(want, jax.tree.map(lambda x: x[i, m], got), f"step {i} member {m}")


@pytest.mark.parametrize("case", ["A-heads2-res-ln-mixed", "emb-only-ln-tied-keys-all"])
def test_document_without_keys(case):
    """A document whose key set is empty (every word selected) matches the generic model."""
    cfg = _cfg(case)
    params, batch = _perturb(_params(cfg, 10), 11), _batch(cfg, 12)
    row0 = np.arange(batch.inputs.shape[0])[:, None] == 0
    batch = _edit(batch, key_mask=np.asarray(batch.key_mask) & ~row0,
                  selected=np.where(row0, batch.valid, batch.selected))
    _check(case, params, batch, f"{case} keyless doc")


def test_no_selected_position_gives_zero():
    cfg = _cfg("F")
    batch = _batch(cfg, 1)
    batch = _edit(batch, selected=np.zeros(batch.selected.shape, bool))
    loss, grads = _fast(cfg, None)(_params(cfg, 0), batch)
    assert float(loss) == 0.0
    assert all(not np.asarray(g).any() for g in jax.tree.leaves(grads))


def test_fast_supported():
    for name in ("attention", "embedding_only"):
        for extra in ([], ["model.residual=true", "model.layernorm=true", "model.decoder=tied",
                           "model.loss=squared"]):
            assert fast_supported(preset("F", [f"model.name={name}"] + extra))
    # the definitions the kernel is not exact for fall back (fail closed)
    for extra in (["model.n_layers=2"], ["mask.objective=causal"], ["model.positional=learned"],
                  ["model.positional=sinusoidal"], ["model.name=reference"]):
        other = preset("F", extra)
        assert not fast_supported(other), extra
        with pytest.raises(ValueError):
            fast_loss({}, None, other)


def test_default_cap_bounds_the_chunked_count():
    """The cap is mean + 10 sd of the chunked count: check mean and bound on 200 batches (the
    sampler of a case above, already compiled), and the size on the reference config."""
    cfg = _cfg("A-heads2-res-ln-mixed")
    B, L = cfg.data.batch_size, cfg.data.seq_len
    n = np.array([_n_chunked(_batch(cfg, seed), cfg) for seed in range(200)])
    p = cfg.mask.p_mask * (1 - cfg.mask.p_replace_mask)
    mean = B * p * (cfg.data.N_min + cfg.data.N_max) / 2
    assert abs(n.mean() - mean) < 0.05 * mean
    assert n.max() < default_cap(cfg, B, L) < B * L
    # reference sizes and corruption (B=40, N in [100, 150]): 150 expected, cap far below B L
    ref = preset("F")
    B, L = ref.data.batch_size, ref.data.seq_len
    assert 150 + 10 * 12 <= default_cap(ref, B, L) <= 150 + 10 * 13 + 8 < B * L // 20
    # a corruption that always shows [MASK] leaves nothing to chunk: the minimum cap
    always_mask = ["mask.p_replace_mask=1", "mask.p_replace_random=0", "mask.p_keep=0"]
    assert default_cap(preset("F", always_mask), B, L) == MIN_CAP
