"""Symmetric optima of regimes V, E and A (topicdyn.theory.optima / .attention).

Tolerances. Consistency with the model's own forward pass on one batch: float32 round-off
(1e-5 relative). Exact population (enumeration, no Monte Carlo error): full-matrix versus
symmetric-family optima agree to the optimiser's tolerance (float32 L-BFGS: 1e-5 in loss, 2e-3
in centred logits; float64 least squares: 1e-8). Monte Carlo: 4 standard errors for one
comparison; 5 for the maximum of ~16 z-scores (P(max |z| > 5) ~ 1e-5 under the null).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from topicdyn.config import Config, apply_overrides, preset
from topicdyn.masking import sample_batch
from topicdyn.models import get_model
from topicdyn.theory import (attention_loss, attention_optimum_A, from_batch, linear_loss,
                             monte_carlo_sample, population, symmetric_optimum_E,
                             symmetric_optimum_V)
from topicdyn.theory.common import lbfgs_minimize
from topicdyn.training import masked_loss

TINY = ["data.T=2", "data.v=2", "data.N_min=3", "data.N_max=3", "data.alpha=0.3",
        "mask.p_mask=0.4", "mask.random_source=content"]
SMALL = ["data.T=3", "data.v=3", "data.N_min=8", "data.N_max=12", "data.batch_size=64"]


def _one_batch(cfg, seed=0):
    return jax.device_get(sample_batch(jax.random.PRNGKey(seed), cfg.data, cfg.mask))


@pytest.mark.parametrize("loss", ["ce", "squared"])
@pytest.mark.parametrize("key_set", ["unselected", "all"])
def test_linear_loss_is_the_model_loss_and_regime_E_equals_regime_V(loss, key_set):
    ov = SMALL + [f"mask.key_set={key_set}", f"model.loss={loss}"]
    cfgV, cfgE = preset("V", ov), preset("E", ov)
    batch = _one_batch(cfgV)
    nv = cfgV.data.n_vocab
    W = np.random.default_rng(0).normal(size=(nv, nv)).astype(np.float32)
    model = get_model(cfgV.model.name)
    pV = dict(model.init(jax.random.PRNGKey(0), cfgV), WV=jnp.asarray(W)[None])
    pE = dict(model.init(jax.random.PRNGKey(0), cfgE), E=jnp.asarray(W))
    lV, _ = model.apply(pV, batch, cfgV)
    lE, _ = model.apply(pE, batch, cfgE)
    np.testing.assert_allclose(lE, lV, atol=1e-5)  # E and V: one function class
    want = float(masked_loss(lV, batch, cfgV))
    got, _ = linear_loss(W, from_batch(batch, nv), cfgV, loss)
    assert abs(got - want) < 1e-5 * max(1.0, abs(want))


@pytest.mark.parametrize("key_set", ["unselected", "all"])
def test_attention_loss_is_the_model_loss(key_set):
    for loss in ("ce", "squared"):
        cfg = preset("A", SMALL + [f"mask.key_set={key_set}", f"model.loss={loss}"])
        batch = _one_batch(cfg, 1)
        nv, d = cfg.data.n_vocab, cfg.d_model
        S = np.random.default_rng(1).normal(size=(nv, nv)).astype(np.float32)
        model = get_model(cfg.model.name)
        # one-hot embeddings: W^Q = S sqrt(d), W^K = I give scores S[x, y]
        params = dict(model.init(jax.random.PRNGKey(0), cfg),
                      WQ=jnp.asarray(S * np.sqrt(d))[None], WK=jnp.eye(d)[None])
        logits, _ = model.apply(params, batch, cfg)
        want = float(masked_loss(logits, batch, cfg))
        got, _ = attention_loss(S, from_batch(batch, nv), cfg, loss)
        assert abs(got - want) < 1e-5 * max(1.0, abs(want)), (loss, got, want)


def _full_ce_via_model(cfg, batch, w):
    """Unconstrained W^V (content columns free, special columns -30) fitted by L-BFGS on the
    weighted exact population, the loss evaluated by the project's model forward pass."""
    nv, V = cfg.data.n_vocab, cfg.data.V
    model = get_model(cfg.model.name)
    base = model.init(jax.random.PRNGKey(0), cfg)
    sel = jnp.asarray(batch.selected, jnp.float32) * jnp.asarray(w, jnp.float32)[:, None]

    def loss(x, batch):
        W = jnp.concatenate([x.reshape(nv, V), jnp.full((nv, nv - V), -30.0)], 1)
        logits, _ = model.apply(dict(base, WV=W[None]), batch, cfg)
        lz = jax.nn.logsumexp(logits, -1)
        per = lz - jnp.take_along_axis(logits, batch.targets[..., None], -1)[..., 0]
        return jnp.sum(per * sel) / jnp.sum(sel)

    x0 = jax.random.normal(jax.random.PRNGKey(1), (nv * V,))
    x, val, _ = lbfgs_minimize(loss, x0, batch, max_iter=2000, tol=1e-6)
    return x.reshape(nv, V), val


def test_full_WV_optimum_lands_in_the_symmetric_family_exact_population():
    from topicdyn.theory import enumerate_batch
    cfg = preset("V", TINY)
    V, nv = cfg.data.V, cfg.data.n_vocab
    batch, w = enumerate_batch(cfg)
    sample = from_batch(batch, nv, w)
    sample = type(sample)(sample.key_counts, sample.doc_weight, sample.q_doc, sample.q_token,
                          sample.q_target, "enumeration", "exact")
    xbar = sample.key_counts / sample.key_counts.sum(1, keepdims=True)
    # cross-entropy: compare what the loss sees, the logits up to a per-query constant
    sym = symmetric_optimum_V(cfg, loss="ce", sample=sample)
    Wf, Lf = _full_ce_via_model(cfg, batch, w)
    zf = xbar @ Wf
    zs = xbar @ sym.matrix[:, :V]
    zf, zs = zf - zf.mean(1, keepdims=True), zs - zs.mean(1, keepdims=True)
    assert np.abs(zf - zs).max() < 2e-3
    assert -1e-5 < sym.plateau - Lf < 1e-5
    # squared loss: the minimum-norm full least-squares W equals the symmetric solution entrywise
    y = np.zeros((sample.n_docs, nv))
    np.add.at(y, (sample.q_doc, sample.q_target), sample.q_weight)
    n = y.sum(1)
    M = np.einsum("d,di,dj->ij", n, xbar, xbar)
    Wsq = np.linalg.pinv(M, rcond=1e-12) @ (xbar.T @ y)
    Wsq[:, V:] = 0.0  # special columns: targets are never special; pinv already gives ~0
    sq = symmetric_optimum_V(cfg, loss="squared", sample=sample)
    np.testing.assert_allclose(Wsq, sq.matrix, atol=1e-8)
    assert abs(linear_loss(Wsq, sample, cfg, "squared")[0] - sq.plateau) < 1e-10
    assert sq.params["s_START"] == pytest.approx(sq.params["s_END"])  # collinear: equal split


def test_monte_carlo_optimum_matches_exact_and_full_matrix_is_symmetric_within_noise():
    cfg = preset("V", TINY)
    V, nv = cfg.data.V, cfg.data.n_vocab
    exact = population(cfg, estimator="enumeration")
    mc = monte_carlo_sample(cfg, n_docs=20000, seed=5)
    for loss in ("ce", "squared"):
        ex = symmetric_optimum_V(cfg, loss=loss, sample=exact)
        est = symmetric_optimum_V(cfg, loss=loss, sample=mc)
        assert abs(est.plateau - ex.plateau) < 4 * est.plateau_se, (loss, est.plateau, ex.plateau)
        g, gse = est.gaps["same_minus_cross"], est.gap_se["same_minus_cross"]
        assert abs(g - ex.gaps["same_minus_cross"]) < 4 * gse, (loss, g, gse)
    # full least squares on the Monte Carlo sample: block-symmetric up to its sampling noise
    xbar = mc.key_counts / mc.key_counts.sum(1, keepdims=True)
    y = np.zeros((mc.n_docs, nv))
    np.add.at(y, (mc.q_doc, mc.q_target), 1.0)
    n = y.sum(1)
    M = np.einsum("d,di,dj->ij", n, xbar, xbar)
    Mi = np.linalg.pinv(M, rcond=1e-12)
    Wf = Mi @ (xbar.T @ y)
    sym = symmetric_optimum_V(cfg, loss="squared", sample=mc).matrix
    z = []
    for j in range(V):  # sandwich variance, documents iid: g_d = n_d xbar (xbar . W_j) - xbar y_dj
        g = xbar * (n * (xbar @ Wf[:, j]) - y[:, j])[:, None]
        g -= g.mean(0)
        cov = Mi @ (g.T @ g) @ Mi
        se = np.sqrt(np.diag(cov))[:V]
        z.append((Wf[:V, j] - sym[:V, j]) / se)
    assert np.abs(np.array(z)).max() < 5


def test_regime_E_prediction_is_regime_V_and_gram_has_topic_blocks():
    cfg = preset("E", TINY)
    s = population(cfg, estimator="enumeration")
    v, e = symmetric_optimum_V(cfg, sample=s), symmetric_optimum_E(cfg, sample=s)
    assert e.plateau == v.plateau and e.params == v.params
    np.testing.assert_array_equal(e.matrix[:, :cfg.data.n_vocab], v.matrix)
    assert e.gram["gap"] > 0 and v.gaps["same_minus_cross"] > 0


def test_regime_A_gap_positive_with_keep_and_zero_without():
    # exact tiny population: with p_keep > 0 attention prefers same-topic keys (here without
    # bound: the scores run to the limit); with p_keep = 0 the query token is independent of
    # the target and the optimum is uniform attention over content keys (gap exactly 0 under
    # key_set=unselected: averaged over the random token, first-order topic-mass changes cancel)
    cfg = apply_overrides(Config(), TINY)
    keep = attention_optimum_A(cfg, loss="ce", estimator="enumeration")
    assert keep.score_gap > 5 and keep.pair_ratio > 100
    assert keep.plateau < keep.uniform_loss
    cfg0 = apply_overrides(cfg, ["mask.p_keep=0", "mask.p_replace_mask=0.9"])
    s0 = population(cfg0, estimator="enumeration")
    no = attention_optimum_A(cfg0, loss="ce", sample=s0)
    assert abs(no.params["s_same"]) < 1e-2 and abs(no.params["s_self"]) < 1e-2, no.params
    # the family's fast loss equals the direct vocabulary-softmax loss at the optimum
    np.testing.assert_allclose(attention_loss(no.score_matrix, s0, cfg0, "ce")[0], no.plateau,
                               atol=1e-5)


def test_regime_A_monte_carlo_gap_and_standard_errors():
    # a Monte Carlo sample: the score gap is resolved (> 4 of its sandwich standard errors)
    ov = ["data.T=5", "data.v=4", "data.N_min=30", "data.N_max=40"]
    cfg = apply_overrides(Config(), ov)
    s = monte_carlo_sample(cfg, n_docs=2000, seed=2)
    o = attention_optimum_A(cfg, loss="ce", sample=s)
    assert o.score_gap > 4 * o.score_gap_se > 0, (o.score_gap, o.score_gap_se)
    assert o.attention_ratio > 1 and o.attention_ratio_tied > 1
    assert o.plateau + 4 * o.plateau_se < o.uniform_loss
