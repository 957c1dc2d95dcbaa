"""The vocabulary-space "attention" and "loss" probes (probes/vocab.py) equal their definitions.

The definitions are probe_attention_generic / probe_loss_generic (probes/__init__.py): the full
model's attention matrices and logits at every position. Both run on the same ProbeContext (the
same evaluation batch, labels and Bayes log-probabilities), once with its vocabulary constants
(make_context(vocab_probes=True)) and once without them; every statistic must agree to float32
round-off, on parameters far from the init.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import topicdyn.probes as probes
from topicdyn.config import preset
from topicdyn.models import get_model
from topicdyn.probes import (floor_names, make_context, make_prober, probe_attention_generic,
                             probe_loss_generic)
from topicdyn.probes import vocab as vocab_probes
from topicdyn.probes.population import uniform_attention

# compile time dominates: classic emitters, no backend optimisation (same float32 arithmetic)
FAST = {"xla_cpu_use_fusion_emitters": False, "xla_backend_optimization_level": 0}

SMALL = ["data.T=4", "data.v=5", "data.N_min=10", "data.N_max=20", "train.n_eval=12",
         "train.n_pop_eval=200"]

CASES = {
    "A": ("A", []),
    "F": ("F", []),
    "E": ("E", []),
    "V": ("V", []),
    "A-keys-all-random-content": ("A", ["mask.key_set=all", "mask.random_source=content",
                                        "mask.p_mask=0.3"]),
    "F-heads2-residual-layernorm": ("F", ["model.n_heads=2", "model.residual=true",
                                          "model.layernorm=true", "data.prior=k_topics"]),
    "F-tied-squared-no-start-end": ("F", ["model.decoder=tied", "model.loss=squared",
                                          "data.start_end=false"]),
    "emb-only-residual": ("F", ["model.name=embedding_only", "model.residual=true"]),
}


def _cfg(case):
    name, extra = CASES[case]
    return preset(name, SMALL + extra)


@functools.lru_cache(maxsize=None)
def _context(case):
    """The vocabulary-space context, and the same context with the generic probes."""
    cfg = _cfg(case)
    with pytest.MonkeyPatch.context() as mp:  # the same sampler program, compiled faster
        mp.setattr(probes, "compile_options", lambda: FAST)
        mp.setattr(probes._population, "compile_options", lambda: FAST)  # its sampler
        ctx = make_context(cfg)
    assert ctx.vocab is not None, "the vocabulary-space probes should cover this model"
    return ctx, dataclasses.replace(ctx, vocab=None)


def _params(cfg, seed, std=0.5):
    """The model's init (params0) and every matrix perturbed at std (numpy: no RNG compile),
    but W^Q and W^K of a variant whose attention is uniform: they are held at zero (its
    UNIFORM_ATTENTION trait), and the vocabulary-space probes pool once per document."""
    p0 = jax.jit(get_model(cfg.model.name).init, static_argnums=1, compiler_options=FAST)(
        jax.random.PRNGKey(0), cfg)
    rng = np.random.default_rng(seed)
    p = jax.tree.map(lambda x: jnp.asarray(np.asarray(x) + std * rng.standard_normal(x.shape),
                                           x.dtype), p0)
    if uniform_attention(cfg) and "WQ" in p0:
        p = {**p, "WQ": p0["WQ"], "WK": p0["WK"]}
        assert not np.any(np.asarray(p0["WQ"])) and not np.any(np.asarray(p0["WK"]))
    return p, p0


def _compare(want, got, what):
    assert set(got) == set(want), (what, sorted(set(got) ^ set(want)))
    for k in want:
        x, y = np.asarray(want[k], np.float64), np.asarray(got[k], np.float64)
        assert np.all(np.isfinite(x)), (what, k)
        np.testing.assert_allclose(y, x, rtol=1e-4, atol=1e-6 * max(1.0, float(np.abs(x).max())),
                                   err_msg=f"{what} {k}")


def probe_attention(p, p0, ctx):
    return vocab_probes.probe_attention(p, ctx)


def probe_loss(p, p0, ctx):
    return vocab_probes.probe_loss(p, ctx)


def _both(fast_fn, generic_fn, ctx_v, ctx_g, p, p0):
    run = jax.jit(lambda p, p0: (fast_fn(p, p0, ctx_v), generic_fn(p, p0, ctx_g)),
                  compiler_options=FAST)
    return jax.device_get(run(p, p0))


@pytest.mark.parametrize("case", list(CASES))
def test_vocab_probes_equal_generic(case):
    ctx_v, ctx_g = _context(case)
    cfg = ctx_v.cfg
    p, p0 = _params(cfg, 1)
    got, want = _both(probe_attention, probe_attention_generic, ctx_v, ctx_g, p, p0)
    _compare(want, got, f"{case} attention")
    # the statistics are not degenerate: attention far from uniform, a loss well above 0
    assert want["kl_uniform"] > 1e-3 or cfg.model.name == "embedding_only" or \
        cfg.model.attention == "uniform"
    assert {"ratio", "ratio_all", "same_topic_all", "kl_uniform"} <= set(want)
    got, want = _both(probe_loss, probe_loss_generic, ctx_v, ctx_g, p, p0)
    _compare(want, got, f"{case} loss")
    assert want["eval_loss"] > 0.5
    assert ctx_v.bayes_logp is None or {"kl_bayes", *floor_names(cfg)} <= set(want)


@pytest.mark.parametrize("case", [c for c in CASES if c != "F-tied-squared-no-start-end"])
def test_reference_statistic_in_vocab_space_equals_generic(case):
    """The authors' statistic (probes/reference_stat.py) from prepare_rows' vocabulary-space
    constants against the same statistic on the model's own attention matrices."""
    ctx_v, _ = _context(case)
    cfg = ctx_v.cfg
    assert ctx_v.ref is not None and ctx_v.ref["rows"] is not None
    variant = probes.get_variant(cfg.model.name)
    p, p0 = _params(cfg, 5)
    run = jax.jit(lambda p: (probes._reference.probe_reference_rows(p, cfg, ctx_v.ref["rows"]),
                             probes._reference.probe_reference(p, cfg, ctx_v.ref, variant)),
                  compiler_options=FAST)
    got, want = jax.device_get(run(p))
    _compare(want, got, f"{case} reference statistic")
    assert {"ref_ratio", "ref_ratio_fixed", "ref_same_token"} <= set(want)
    if not uniform_attention(cfg):  # uniform attention: both ratios are 1 whatever the labels
        assert abs(float(want["ref_ratio"]) - float(want["ref_ratio_fixed"])) > 1e-4


@pytest.mark.parametrize("case", ["A", "emb-only-residual"])
def test_documents_without_keys(case):
    """Document 0 has no keys at all (every content word selected, START/END not keys) and
    document 1 only START/END as keys: the generic model gives keyless queries zero attention."""
    ctx_v, _ = _context(case)
    cfg, b = ctx_v.cfg, ctx_v.batch
    row = np.arange(b.inputs.shape[0])[:, None]
    valid = np.asarray(b.valid)
    content = np.asarray(b.targets) < cfg.data.V
    sel = np.where(row < 2, content, np.asarray(b.selected))
    keys = np.where(row == 0, False, np.where(row == 1, valid & ~content, np.asarray(b.key_mask)))
    batch = b._replace(selected=jnp.asarray(sel), key_mask=jnp.asarray(keys))
    vc = vocab_probes.prepare(cfg, batch, np.asarray(ctx_v.labels), None)
    ctx_v = dataclasses.replace(ctx_v, batch=batch, bayes_logp=None, vocab=vc)
    ctx_g = dataclasses.replace(ctx_v, vocab=None)
    p, p0 = _params(cfg, 2)
    _compare(*_both(probe_attention_generic, probe_attention, ctx_g, ctx_v, p, p0),
             f"{case} keyless attention")
    _compare(*_both(probe_loss_generic, probe_loss, ctx_g, ctx_v, p, p0), f"{case} keyless loss")


def test_prober_over_seeds_equals_generic_prober():
    """make_prober: the single vmapped vocabulary-space program (all default probes) against the
    generic per-probe programs, for two ensemble members."""
    ctx_v, ctx_g = _context("F")
    pa, p0 = _params(ctx_v.cfg, 3)
    pb, _ = _params(ctx_v.cfg, 4)
    stack = lambda *t: jax.tree.map(lambda *x: jnp.stack(x), *t)  # noqa: E731
    params, params0 = stack(pa, pb), stack(p0, p0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(probes, "compile_options", lambda: FAST)
        mp.setattr(probes._population, "compile_options", lambda: FAST)  # its sampler
        got = jax.device_get(make_prober(ctx_v)(params, params0))
        want = jax.device_get(make_prober(ctx_g)(params, params0))
    assert any(k.startswith("attention/") for k in want) and "loss/eval_loss" in want
    for k in want:
        assert np.shape(want[k]) == (2,), k
    _compare(want, got, "prober")
    assert not np.allclose(want["loss/eval_loss"][0], want["loss/eval_loss"][1])
