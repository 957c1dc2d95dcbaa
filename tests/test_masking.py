"""MLM corruption statistics over a large batch (4000 default documents, ~5e5 content positions).

Selection and replacement are iid per position, so counts are binomial/multinomial and their
standard errors are exact; tolerances are Z = 5 standard errors.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from topicdyn.config import DataConfig, MaskConfig, preset
from topicdyn.masking import (NOT_SELECTED, SHOW_KEEP, SHOW_MASK, SHOW_RANDOM, corrupt,
                              sample_batch)

Z = 5.0

corrupt_jit = jax.jit(corrupt, static_argnums=(2, 3))

DEFAULT = MaskConfig()  # p_mask 0.15, split 0.8/0.1/0.1, random from all ids, keys = unselected
CUSTOM = MaskConfig(p_mask=0.3, p_replace_mask=0.5, p_replace_random=0.3, p_keep=0.2,
                    random_source="content", key_set="all")


@pytest.fixture(scope="module", params=["default", "custom"])
def case(request, default_docs, default_data_cfg):
    mask = DEFAULT if request.param == "default" else CUSTOM
    batch = jax.device_get(corrupt_jit(jax.random.PRNGKey(11), default_docs, default_data_cfg,
                                       mask))
    return default_data_cfg, mask, default_docs, batch


def _within(count, n, p, what):
    se = np.sqrt(p * (1 - p) / n)
    assert abs(count / n - p) < Z * se, (what, count / n, p, se)


def test_targets_are_the_clean_tokens_and_ground_truth_passes_through(case):
    data, mask, docs, b = case
    assert np.array_equal(b.targets, docs.tokens)
    assert np.array_equal(b.topics, docs.topics)
    assert np.array_equal(b.theta, docs.theta)
    assert np.array_equal(b.valid, docs.tokens != data.PAD)
    assert b.inputs.dtype == np.int32 and b.targets.dtype == np.int32


def test_selection_rate_and_only_content_selected(case):
    data, mask, docs, b = case
    content = b.targets < data.V  # content words, computed from the clean tokens alone
    sel = np.asarray(b.selected)
    assert not np.any(sel & ~content), "a special or PAD position was selected"
    n = int(content.sum())
    assert n > 400_000
    _within(int(sel.sum()), n, mask.p_mask, "selection rate")
    # specials and PAD are shown unchanged; so is every unselected position
    assert np.array_equal(b.inputs[~sel], b.targets[~sel])


def test_replacement_split_from_inputs(case):
    """P(input = MASK | sel), P(input = target | sel) from inputs/targets only.

    A random token can itself be [MASK] (random_source=all) or the target, so
    P(MASK) = p_mask_tok + p_rand * [MASK in source] / |source| and
    P(same) = p_keep + p_rand / |source| (the target is a content word, always in the source).
    """
    data, mask, docs, b = case
    sel = np.asarray(b.selected)
    n = int(sel.sum())
    inp, tgt = b.inputs[sel], b.targets[sel]
    size = data.n_vocab if mask.random_source == "all" else data.V
    p_masktok = mask.p_replace_mask + mask.p_replace_random * (1 / size if size > data.MASK else 0)
    p_same = mask.p_keep + mask.p_replace_random / size
    _within(int((inp == data.MASK).sum()), n, p_masktok, "shows [MASK]")
    _within(int((inp == tgt).sum()), n, p_same, "shows its own token")
    _within(int(((inp != data.MASK) & (inp != tgt)).sum()), n, 1 - p_masktok - p_same,
            "shows another token")


def test_kind_split_and_consistency(case):
    data, mask, docs, b = case
    sel = np.asarray(b.selected)
    kind = np.asarray(b.kind)
    assert np.array_equal(kind != NOT_SELECTED, sel)
    n = int(sel.sum())
    for k, p in ((SHOW_MASK, mask.p_replace_mask), (SHOW_RANDOM, mask.p_replace_random),
                 (SHOW_KEEP, mask.p_keep)):
        _within(int((kind == k).sum()), n, p, f"kind {k}")
    assert np.all(b.inputs[kind == SHOW_MASK] == data.MASK)
    assert np.array_equal(b.inputs[kind == SHOW_KEEP], b.targets[kind == SHOW_KEEP])


def test_random_tokens_uniform_over_source(case):
    data, mask, docs, b = case
    rnd = b.inputs[np.asarray(b.kind) == SHOW_RANDOM]
    n = len(rnd)
    size = data.n_vocab if mask.random_source == "all" else data.V
    counts = np.bincount(rnd, minlength=data.n_vocab)
    assert len(counts) == data.n_vocab and rnd.min() >= 0
    assert np.all(counts[size:] == 0), "random token outside the configured source"
    p = 1 / size
    z = np.abs(counts[:size] - n * p) / np.sqrt(n * p * (1 - p))
    assert z.max() < Z, (z.max(), counts)
    # every id of the source is reachable (expected count >= 70 in both cases)
    assert n * p > 70 and np.all(counts[:size] > 0)


def test_key_mask(case):
    data, mask, docs, b = case
    not_pad = b.targets != data.PAD
    if mask.key_set == "unselected":
        expected = not_pad & ~np.asarray(b.selected)
    else:
        expected = not_pad
    assert np.array_equal(b.key_mask, expected)
    # START and END are always keys
    assert np.all(b.key_mask[b.targets == data.START]) and np.all(b.key_mask[b.targets == data.END])


def test_sample_batch_pipeline():
    data = DataConfig(T=3, v=4, N_min=5, N_max=9, prior="k_topics", k=2, k_weights="equal")
    f = jax.jit(sample_batch, static_argnums=(1, 2, 3))
    a = jax.device_get(f(jax.random.PRNGKey(5), data, DEFAULT, 256))
    again = jax.device_get(f(jax.random.PRNGKey(5), data, DEFAULT, 256))
    other = jax.device_get(f(jax.random.PRNGKey(6), data, DEFAULT, 256))
    for x, y in zip(a, again):
        assert np.array_equal(x, y)
    assert not np.array_equal(a.targets, other.targets)
    assert a.inputs.shape == (256, data.seq_len)
    # clean targets keep the document layout; selection only at content words
    assert np.all(a.targets[:, 0] == data.START)
    assert np.all((a.targets < data.V) | ~a.selected)
    assert np.array_equal(a.key_mask, (a.targets != data.PAD) & ~a.selected)
    assert np.array_equal(a.inputs[~a.selected], a.targets[~a.selected])
    # the per-position corruption is not identical to the document draw (independent streams)
    assert a.selected.any() and not np.array_equal(a.inputs, a.targets)


@pytest.mark.parametrize("over", [
    [],
    ["mask.p_mask=0.3", "mask.random_source=content"],
    ["mask.p_replace_mask=0.9", "mask.p_keep=0.0"],
    ["mask.p_replace_mask=0.9", "mask.p_replace_random=0.0", "mask.p_keep=0.1"],
    ["mask.p_mask=1.0", "mask.p_replace_mask=1.0", "mask.p_replace_random=0.0",
     "mask.p_keep=0.0"],
    ["mask.p_mask=0.01", "mask.key_set=all"],
])
def test_traced_thresholds_give_identical_batches(over):
    """Mask probabilities as traced per-member thresholds (sweeps) = compile-time constants."""
    from topicdyn.masking import mask_thresholds
    cfg = preset("F", ["data.T=3", "data.v=4", "data.N_min=20", "data.N_max=30"] + over)
    thr = mask_thresholds(cfg.data, [cfg.mask])
    one = jax.tree.map(lambda x: jnp.asarray(x[0]), thr)
    key = jax.random.PRNGKey(3)
    a = sample_batch(key, cfg.data, cfg.mask)
    # the traced path must not read cfg.mask's probabilities: give it other ones
    other = dataclasses.replace(cfg.mask, p_mask=0.5, p_replace_mask=0.5, p_replace_random=0.25,
                                p_keep=0.25)
    b = sample_batch(key, cfg.data, other, None, one)
    for f in ("inputs", "targets", "selected", "key_mask", "kind"):
        assert np.array_equal(np.asarray(getattr(a, f)), np.asarray(getattr(b, f))), f
