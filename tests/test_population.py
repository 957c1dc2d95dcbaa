"""The population-loss estimate (probes/population.py) against numpy loops over its documents.

Both implementations (bag-of-words rows and the variant's own forward pass over chunks) must
give the loss of the model's logits at the selected positions, the document-cluster standard
error of that ratio and the split by query kind.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from topicdyn.config import preset
from topicdyn.masking import SHOW_KEEP, SHOW_MASK, SHOW_RANDOM
from topicdyn.models import get_model, get_variant
from topicdyn.probes import population

FAST = {"xla_cpu_use_fusion_emitters": False, "xla_backend_optimization_level": 0}
SMALL = ["data.T=4", "data.v=5", "data.N_min=10", "data.N_max=20", "train.n_pop_eval=130"]


def _numpy_estimate(cfg, params, b):
    logits, _ = get_variant(cfg.model.name).apply(params, b, cfg)
    logits = np.asarray(logits, np.float64)
    nv = cfg.data.n_vocab
    num, den = [], []
    kinds = {SHOW_MASK: [0.0, 0], SHOW_KEEP: [0.0, 0], SHOW_RANDOM: [0.0, 0]}
    for d in range(logits.shape[0]):
        s, n = 0.0, 0
        for i in range(logits.shape[1]):
            if not b.selected[d, i]:
                continue
            z, y = logits[d, i], int(b.targets[d, i])
            if cfg.model.loss == "ce":
                loss = np.log(np.exp(z - z.max()).sum()) + z.max() - z[y]
            else:
                loss = float(np.sum((z - np.eye(nv)[y]) ** 2))
            s, n = s + loss, n + 1
            kinds[int(b.kind[d, i])][0] += loss
            kinds[int(b.kind[d, i])][1] += 1
        num.append(s)
        den.append(n)
    num, den = np.array(num), np.array(den)
    r = num.sum() / den.sum()
    D = len(num)
    se = np.sqrt(D / (D - 1) * np.sum((num - r * den) ** 2)) / den.sum()
    return {"pop_loss": r, "pop_loss_se": se, "pop_loss_mask": kinds[SHOW_MASK][0] /
            kinds[SHOW_MASK][1], "pop_loss_keep": kinds[SHOW_KEEP][0] / kinds[SHOW_KEEP][1],
            "pop_loss_random": kinds[SHOW_RANDOM][0] / kinds[SHOW_RANDOM][1]}


@pytest.mark.parametrize("name,extra", [("A", []), ("F", ["model.loss=squared"]),
                                        ("F", ["model.n_heads=2", "model.residual=true"]),
                                        ("V", []), ("V", ["model.n_heads=2"])])
def test_population_loss_matches_numpy(name, extra, monkeypatch):
    cfg = preset(name, SMALL + extra)
    monkeypatch.setattr(population, "compile_options", lambda: FAST)
    p0 = jax.jit(get_model(cfg.model.name).init, static_argnums=1, compiler_options=FAST)(
        jax.random.PRNGKey(0), cfg)
    rng = np.random.default_rng(1)
    params = jax.tree.map(lambda x: jnp.asarray(np.asarray(x) + 0.5 * rng.standard_normal(
        x.shape), x.dtype), p0)
    if population.uniform_attention(cfg):  # W^Q, W^K held at zero: the rows pool per document
        params = {**params, "WQ": p0["WQ"], "WK": p0["WK"]}
    b = population.pop_batch(cfg)
    want = _numpy_estimate(cfg, params, b)
    fast = population.prepare(cfg)
    assert fast["rows"], "this config has the bag-of-words formulation"
    monkeypatch.setattr(population, "fast_supported", lambda c: False)
    generic = population.prepare(cfg)
    assert not generic["rows"] and generic["n_docs"] == 130  # 130 docs: a padded last chunk
    for pop in (fast, generic):
        got = jax.device_get(population.pop_loss(params, cfg, pop))
        assert set(got) == set(want)
        for k in want:
            np.testing.assert_allclose(float(got[k]), want[k], rtol=2e-4, err_msg=k)
    assert 0 < want["pop_loss_se"] < 0.2 * want["pop_loss"]


def test_population_documents_are_their_own_stream():
    from topicdyn.probes import eval_batch
    cfg = preset("A", SMALL + ["train.n_eval=130"])
    a, b = population.pop_batch(cfg), jax.device_get(eval_batch(cfg))
    assert not np.array_equal(a.inputs, b.inputs)
    assert population.prepare(preset("A", SMALL + ["train.n_pop_eval=0"])) is None


def test_population_error_is_honest_across_streams(monkeypatch):
    """The same model on 8 independent document streams: the estimates scatter as their s.e."""
    monkeypatch.setattr(population, "compile_options", lambda: FAST)
    base = preset("F", SMALL + ["train.n_pop_eval=300"])
    p0 = jax.jit(get_model(base.model.name).init, static_argnums=1, compiler_options=FAST)(
        jax.random.PRNGKey(0), base)
    rng = np.random.default_rng(2)
    params = jax.tree.map(lambda x: jnp.asarray(np.asarray(x) + 0.5 * rng.standard_normal(
        x.shape), x.dtype), p0)
    vals, ses = [], []
    for seed in range(8):
        cfg = preset("F", SMALL + ["train.n_pop_eval=300", f"train.seed={seed}"])
        got = jax.device_get(population.pop_loss(params, cfg, population.prepare(cfg)))
        vals.append(float(got["pop_loss"]))
        ses.append(float(got["pop_loss_se"]))
    ratio = np.var(vals, ddof=1) / np.mean(ses) ** 2
    assert 0.1 < ratio < 3.5, ratio  # chi2(7)/7: 99.8% in [0.12, 3.3]
