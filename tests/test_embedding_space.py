"""Embedding-space probes (probes/embedding_space.py) against numpy, on the Bayes predictor
itself and on wrong predictors, and the vocabulary-space path against the generic one."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import topicdyn.probes as probes
from topicdyn.config import preset
from topicdyn.models import get_model
from topicdyn.probes import make_context, probe_near
from topicdyn.probes.embedding_space import near_stats

FAST = {"xla_cpu_use_fusion_emitters": False, "xla_backend_optimization_level": 0}


def _numpy_near(z, r, rows, V):
    p, s = [], []
    for i in np.nonzero(rows)[0]:
        ok = np.isfinite(r[i, :V])
        a, b = z[i, :V][ok], r[i, :V][ok]
        p.append(np.corrcoef(a, b)[0, 1])
        ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
        s.append(np.corrcoef(ra, rb)[0, 1])
    return np.mean(p), np.mean(s)


def test_near_stats_match_numpy_and_their_exact_values():
    rng = np.random.default_rng(0)
    R, V, nv = 30, 12, 15
    ref = np.log(rng.dirichlet(np.ones(V), size=R))
    ref = np.concatenate([ref, np.full((R, nv - V), -np.inf)], 1)
    ref[3, 5] = -np.inf  # an impossible word is left out of its row
    z = rng.normal(size=(R, nv))
    rows = rng.random(R) < 0.7
    got = jax.device_get(near_stats(jnp.asarray(z), jnp.asarray(ref), jnp.asarray(rows), V))
    want = _numpy_near(z, ref, rows, V)
    np.testing.assert_allclose([got["near_pearson"], got["near_spearman"]], want, rtol=1e-5)
    bayes = np.where(np.isfinite(ref), ref, -50.0)  # the Bayes predictor as a model: 1
    got = near_stats(jnp.asarray(bayes), jnp.asarray(ref), jnp.asarray(rows), V)
    assert abs(float(got["near_pearson"]) - 1) < 1e-5
    assert abs(float(got["near_spearman"]) - 1) < 1e-5
    got = near_stats(jnp.asarray(-bayes), jnp.asarray(ref), jnp.asarray(rows), V)  # inverted
    assert float(got["near_pearson"]) < -0.99 and float(got["near_spearman"]) < -0.99


@pytest.mark.parametrize("name", ["A", "F"])
def test_near_probe_vocab_path_equals_generic(name):
    cfg = preset(name, ["data.T=4", "data.v=5", "data.N_min=10", "data.N_max=20",
                        "train.n_eval=12", "train.n_pop_eval=0"])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(probes, "compile_options", lambda: FAST)
        ctx = make_context(cfg)
    assert ctx.vocab is not None and ctx.bayes_visible_logp is not None
    p0 = get_model(cfg.model.name).init(jax.random.PRNGKey(0), cfg)
    rng = np.random.default_rng(1)
    p = jax.tree.map(lambda x: jnp.asarray(np.asarray(x) + 0.5 * rng.standard_normal(x.shape),
                                           x.dtype), p0)
    fast = jax.device_get(probe_near(p, p0, ctx))
    slow = jax.device_get(probe_near(p, p0, dataclasses.replace(ctx, vocab=None)))
    for k in ("near_pearson", "near_spearman"):
        np.testing.assert_allclose(fast[k], slow[k], rtol=1e-4, atol=1e-6)
        assert -1 <= slow[k] <= 1


def test_probing_a_subset_keeps_the_other_probes(tmp_path):
    """`topicdyn probe RUN --probes near` adds near/* to every row; nothing else is lost."""
    import json

    from topicdyn.cli import main

    tiny = ["data.T=3", "data.v=4", "data.N_min=10", "data.N_max=20", "data.batch_size=8",
            "train.steps=20", "train.log_every=10", "train.ckpt_steps=[0,10,20]",
            "train.chunk=10", "train.n_pop_eval=50"]
    run = tmp_path / "run"
    assert main(["train", "--preset", "V", "--out", str(run), "--no-progress",
                 "--no-figures"] + tiny) == 0
    before = [json.loads(x) for x in (run / "probes.jsonl").read_text().splitlines()]
    assert main(["probe", str(run), "--probes", "near"]) == 0
    after = [json.loads(x) for x in (run / "probes.jsonl").read_text().splitlines()]
    assert [r["step"] for r in after] == [r["step"] for r in before] == [0, 10, 20]
    for a, b in zip(after, before):
        assert {k: v for k, v in a.items() if not k.startswith("near/")} == b
        assert len(a["near/near_pearson"]) == 1


def _numpy_copy_bias(logp, counts, wt, T):
    out = []
    for r in range(len(logp)):
        gs = []
        for t in range(T):
            words = np.nonzero(wt == t)[0]
            a = [logp[r, w] for w in words if counts[r, w] > 0]
            b = [logp[r, w] for w in words if counts[r, w] == 0]
            if a and b:
                gs.append(np.mean(a) - np.mean(b))
        out.append(np.mean(gs) if gs else 0.0)
    return np.array(out)


def test_copy_bias_is_zero_for_bayes_and_positive_for_a_copier():
    from topicdyn.probes.embedding_space import copy_bias

    T, v, alpha = 4, 5, 0.1
    V = T * v
    wt = np.repeat(np.arange(T), v)
    rng = np.random.default_rng(3)
    counts = np.zeros((40, V))
    for r in range(40):  # documents of 2 topics, 12 visible words
        topics = rng.choice(T, 2, replace=False)
        for w in rng.choice(np.r_[topics[0] * v + np.arange(v), topics[1] * v + np.arange(v)],
                            12):
            counts[r, w] += 1
    n_t = counts @ (wt[:, None] == np.arange(T)).astype(float)
    bayes = np.log((alpha + n_t[:, wt]) / (T * alpha + counts.sum(1, keepdims=True)) / v)
    g = np.asarray(copy_bias(jnp.asarray(bayes), jnp.asarray(counts), jnp.asarray(wt), T))
    np.testing.assert_allclose(g, 0.0, atol=1e-6)  # EMBEDDING_SPACE.md §3: exactly 0
    copier = np.log(np.exp(bayes) + 0.05 * (counts > 0))  # extra mass on seen tokens
    g = np.asarray(copy_bias(jnp.asarray(copier), jnp.asarray(counts), jnp.asarray(wt), T))
    np.testing.assert_allclose(g, _numpy_copy_bias(copier, counts, wt, T), rtol=1e-5, atol=1e-7)
    assert np.all(g[g != 0] > 0.01) and (g != 0).mean() > 0.9
