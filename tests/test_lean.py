"""lean_loss (the training step's loss, models/lean.py) against the generic model.

The reference is training.loss_fn with model.impl=generic: the full-sequence Flax transformer and
masked_loss, which share no code with the lean path. Values and gradients must agree to float32
round-off, on parameters far from the init (std 0.5), for

* const = frozenset(): every matrix is an ordinary input, all of them perturbed;
* const = structural_constants(cfg, trainable_groups(cfg)): the matrices named there keep the
  model init's exact constants (identity embedding/decoder, zero W^Q/W^K), all others perturbed;
  gradients are compared on the others (the constants get none).

Also: training.train_loss_fn equals the generic training.loss_fn on a training batch (values,
and gradients of the groups the optimiser trains).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from topicdyn.config import apply_overrides, preset
from topicdyn.masking import sample_batch
from topicdyn.models import get_model
from topicdyn.models.lean import lean_loss, lean_supported, structural_constants
from topicdyn.models import get_variant
from topicdyn.training import loss_fn, train_batch, train_loss_fn, trainable_groups

# the topic prior never matters to the loss; k_topics/equal compiles faster than Dirichlet
SMALL = ["data.T=4", "data.v=5", "data.N_min=20", "data.N_max=30", "data.batch_size=8",
         "data.prior=k_topics", "data.k_weights=equal"]
# many selected positions that do not show [MASK]: the group-2 rows get real work
MIXED = ["mask.p_mask=0.3", "mask.p_replace_mask=0.4", "mask.p_replace_random=0.3",
         "mask.p_keep=0.3"]

CASES = {
    "E-random-content": ("E", ["mask.random_source=content"]),
    "V-keys-all": ("V", ["mask.key_set=all"]),
    "A": ("A", []),
    "F": ("F", []),
    "F-tied-keys-all-mixed": ("F", ["model.decoder=tied", "mask.key_set=all"] + MIXED),
    "V-trained-embedding-random-content": ("V", ["model.embedding=trained",
                                                 "mask.random_source=content"] + MIXED),
    # one-hot embedding with a tied decoder: E is constant and so is the decoder E^T
    "A-onehot-tied-random-content": ("A", ["model.decoder=tied", "mask.random_source=content"]
                                     + MIXED),
    "V-onehot-tied-keys-all": ("V", ["model.decoder=tied", "mask.key_set=all"]),
    # d_model > n_vocab: the one-hot embedding and identity decoder are not square
    "A-d32-keys-all": ("A", ["model.d_model=32", "mask.key_set=all"] + MIXED),
    "emb-only": ("F", ["model.name=embedding_only"] + MIXED),
}
CONST_MODES = ("none", "structural")
# parameter names behind each structural constant
CONST_PARAMS = {"E": ("E",), "W_dec": ("W_dec",), "QK": ("WQ", "WK")}

# compile time dominates these tests: XLA:CPU's classic emitters without backend optimisation
# compile ~5x faster; the arithmetic (float32 throughout) is the same
FAST = {"xla_cpu_use_fusion_emitters": False, "xla_backend_optimization_level": 0}

_sample = jax.jit(sample_batch, static_argnums=(1, 2, 3), compiler_options=FAST)


def _cfg(case, *extra):
    name, over = CASES[case]
    return preset(name, SMALL + over + list(extra))


def _const(cfg, mode):
    return frozenset() if mode == "none" else structural_constants(cfg, trainable_groups(cfg))


def _const_names(const):
    return {n for c in const for n in CONST_PARAMS[c]}


@functools.lru_cache(maxsize=None)
def _init(model_name):
    return jax.jit(get_model(model_name).init, static_argnums=1, compiler_options=FAST)


def _params(cfg, const, seed, std=0.5):
    """The model's init, with every matrix not named by `const` redrawn around it at `std`
    (numpy: no RNG compile). Matrices named by `const` keep their exact constant values."""
    p = _init(cfg.model.name)(jax.random.PRNGKey(0), cfg)
    rng, keep = np.random.default_rng(seed), _const_names(const)
    return {n: x if n in keep else
            jax.tree.map(lambda a: jnp.asarray(np.asarray(a) + std * rng.standard_normal(a.shape),
                                               a.dtype), x)
            for n, x in p.items()}


def _batch(cfg, seed):
    return _sample(jax.random.key(seed, impl="rbg"), cfg.data, cfg.mask, cfg.data.batch_size)


def _edit(batch, **fields):
    return batch._replace(**{k: jnp.asarray(v) for k, v in fields.items()})


@functools.lru_cache(maxsize=None)
def _generic(cfg):
    g = apply_overrides(cfg, ["model.impl=generic"])
    return jax.jit(jax.value_and_grad(lambda p, b: loss_fn(p, b, g)), compiler_options=FAST)


@functools.lru_cache(maxsize=None)
def _lean(cfg, cap, const):
    return jax.jit(jax.value_and_grad(lambda p, b: lean_loss(p, b, cfg, cap=cap, const=const)),
                   compiler_options=FAST)


def _assert_close(want, got, what):
    """rtol 1e-4, atol 1e-5 of the leaf's largest entry (float32 sums of ~10^2 terms)."""
    x, y = np.asarray(want), np.asarray(got)
    assert x.shape == y.shape, (what, x.shape, y.shape)
    atol = 1e-5 * max(1.0, float(np.abs(x).max()))
    np.testing.assert_allclose(y, x, rtol=1e-4, atol=atol, err_msg=what)


def _check(cfg, params, batch, const, cap=None, what=""):
    (lg, gg), (ll, gl) = _generic(cfg)(params, batch), _lean(cfg, cap, const)(params, batch)
    assert np.isfinite(float(lg))
    _assert_close(lg, ll, f"{what} loss")
    skip = _const_names(const)
    for name in params:
        if name in skip:  # taken as a constant: no gradient flows to it
            assert not np.asarray(gl[name]).any(), f"{what} grad {name} of a constant"
        else:
            _assert_close(gg[name], gl[name], f"{what} grad {name}")
    return float(lg)


def _n_group2(batch, cfg):
    """Selected positions that do not show [MASK] (the lean path's per-position rows)."""
    return int((np.asarray(batch.selected) & (np.asarray(batch.inputs) != cfg.data.MASK)).sum())


def test_cases_cover_every_preset_and_structural_constant():
    assert {CASES[c][0] for c in CASES} == {"E", "V", "A", "F"}
    seen = set()
    for case in CASES:
        cfg = _cfg(case)
        assert lean_supported(cfg), case
        seen |= structural_constants(cfg, trainable_groups(cfg))
    assert seen == {"E", "W_dec", "QK"}


@pytest.mark.parametrize("mode", CONST_MODES)
@pytest.mark.parametrize("case", list(CASES))
def test_lean_matches_generic(case, mode):
    cfg = _cfg(case)
    const = _const(cfg, mode)
    params, batch = _params(cfg, const, 1), _batch(cfg, 2)
    assert np.asarray(batch.selected).sum() > 10
    loss = _check(cfg, params, batch, const, what=f"{case}/{mode}")
    assert loss > 0.5  # parameters far from trivial: a real loss, not ~0


def test_structural_constants_of_the_presets():
    """Closed form from the preset definitions (config.PRESETS) and the optimiser's groups."""
    want = {"E": {"W_dec", "QK"}, "V": {"E", "W_dec", "QK"}, "A": {"E", "W_dec"}, "F": set()}
    for name, expected in want.items():
        cfg = preset(name)
        assert structural_constants(cfg, trainable_groups(cfg)) == expected, name
    # a group the optimiser may move (now or from a scheduled step on) is never a constant
    cfg = preset("V", ["optim.unfreeze_at=[[\"embedding\", 5], [\"query\", 7]]"])
    assert structural_constants(cfg, trainable_groups(cfg)) == {"W_dec"}
    cfg = preset("E", ["optim.unfreeze_at=[[\"decoder\", 5]]"])
    assert structural_constants(cfg, trainable_groups(cfg)) == {"QK"}


# tiny caps: the loop over group-2 chunks runs several iterations
@pytest.mark.parametrize("case,mode,cap", [
    ("F-tied-keys-all-mixed", "none", 8),
    ("A-onehot-tied-random-content", "structural", 8),
    ("V-trained-embedding-random-content", "none", 5),
    ("A-d32-keys-all", "structural", 3),
])
def test_overflowing_cap_stays_exact(case, mode, cap):
    cfg = _cfg(case)
    const = _const(cfg, mode)
    params, batch = _params(cfg, const, 3), _batch(cfg, 4)
    assert _n_group2(batch, cfg) > 4 * cap
    _check(cfg, params, batch, const, cap=cap, what=f"{case}/{mode} cap={cap}")


@pytest.mark.parametrize("case,mode", [("A", "structural"), ("F-tied-keys-all-mixed", "none"),
                                       ("E-random-content", "structural"), ("emb-only", "none")])
def test_documents_without_keys(case, mode):
    """Row 0: every word selected (no keys at all); row 1: only START/END are keys; row 2:
    nothing selected. The generic model gives a keyless query zero attention output."""
    cfg = _cfg(case)
    const = _const(cfg, mode)
    params, batch = _params(cfg, const, 5), _batch(cfg, 6)
    B, L = batch.inputs.shape
    row = np.arange(B)[:, None]
    valid, content = np.asarray(batch.valid), np.asarray(batch.targets) < cfg.data.V
    sel = np.asarray(batch.selected)
    sel = np.where(row == 0, valid, np.where(row == 1, content, np.where(row == 2, False, sel)))
    keys = np.asarray(batch.key_mask)
    keys = np.where(row == 0, False, np.where(row == 1, valid & ~content, keys))
    batch = _edit(batch, selected=sel, key_mask=keys)
    _check(cfg, params, batch, const, what=f"{case}/{mode} keyless")
    _check(cfg, params, batch, const, cap=4, what=f"{case}/{mode} keyless cap=4")


def test_no_group2_and_no_selection():
    """Every selected position shows [MASK] (no group-2 row: the loop body runs once, for
    group 1 only); then no selected position at all (loss and gradients exactly 0)."""
    case = "A"
    cfg = _cfg(case)
    const = _const(cfg, "structural")
    params, batch = _params(cfg, const, 7), _batch(cfg, 8)
    sel = np.asarray(batch.selected)
    batch = _edit(batch, inputs=np.where(sel, cfg.data.MASK, np.asarray(batch.inputs)))
    assert _n_group2(batch, cfg) == 0 and sel.sum() > 0
    _check(cfg, params, batch, const, what="all [MASK]")
    empty = _edit(batch, selected=np.zeros(sel.shape, bool))
    loss, grads = _lean(cfg, None, const)(params, empty)
    assert float(loss) == 0.0
    assert all(not np.asarray(g).any() for g in jax.tree.leaves(grads))


# ---- train_loss_fn ------------------------------------------------------------------------------

TRAIN_CASES = {
    "E": ("E", []), "V": ("V", []), "A": ("A", []), "F": ("F", []),
    # the scheduled unfreeze makes the embedding trainable: E is no longer a constant
    "V-unfreeze-embedding": ("V", ["optim.unfreeze_at=[[\"embedding\", 3]]"]),
}


@pytest.mark.parametrize("case", list(TRAIN_CASES))
def test_train_loss_fn_equals_loss_fn(case):
    name, over = TRAIN_CASES[case]
    cfg = preset(name, SMALL + over)
    const = structural_constants(cfg, trainable_groups(cfg))
    params = _params(cfg, const, 9)
    batch = jax.jit(train_batch, static_argnums=2, compiler_options=FAST)(3, 17, cfg)
    gen = apply_overrides(cfg, ["model.impl=generic"])
    (lt, gt), (lg, gg) = jax.jit(lambda p, b: (
        jax.value_and_grad(train_loss_fn)(p, b, cfg),
        jax.value_and_grad(loss_fn)(p, b, gen)), compiler_options=FAST)(params, batch)
    assert float(lg) > 0.5
    _assert_close(lg, lt, f"{case} train_loss_fn vs generic loss_fn")
    # the optimiser only reads the gradients of the groups it trains
    train = trainable_groups(cfg)
    assert train
    for n in params:
        if get_variant(cfg.model.name).param_group((n,)) in train:
            _assert_close(gg[n], gt[n], f"{case} grad {n}")


def test_row_ranks_equal_numpy_prefix_counts():
    """The two-level blocked prefix sum (linear in B L) against numpy's cumsum, across block
    boundaries, partial blocks and more block totals than one block holds."""
    from topicdyn.models.lean import row_ranks

    rng = np.random.default_rng(0)
    for B, L, p in ((1, 1, 1.0), (3, 5, 0.5), (40, 152, 0.03), (7, 64 * 65 + 3, 0.9),
                    (160, 602, 0.2)):
        g = rng.uniform(size=(B, L)) < p
        got = np.asarray(jax.jit(row_ranks)(jnp.asarray(g)))
        np.testing.assert_array_equal(got, np.cumsum(g.reshape(-1)) - 1)
