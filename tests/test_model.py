"""The one-layer transformer against a float64 numpy reimplementation; the presets' matrices."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from topicdyn.config import DataConfig, ModelConfig, Config, preset
from topicdyn.masking import MLMBatch
from topicdyn.models import get_model
from topicdyn.training import loss_fn, masked_loss

TINY_DATA = DataConfig(T=3, v=2, N_min=3, N_max=5, alpha=0.5)  # V=6, n_vocab=10, L=7
B = 6
Z = 5.0  # tolerance in standard errors for the statistics of random inits

_jit_cache: dict = {}


def _run(name, params, batch, cfg, capture=True):
    """(logits, intermediates, loss_fn, masked_loss) of get_model(name).apply, jitted with the
    config static: one compilation per (config, capture)."""
    if (name, capture) not in _jit_cache:
        def f(p, b, c):
            logits, inter = get_model(name).apply(p, b, c, capture)
            return logits, inter, loss_fn(p, b, c), masked_loss(logits, b, c)
        _jit_cache[name, capture] = jax.jit(f, static_argnums=(2,))
    return _jit_cache[name, capture](params, batch, cfg)


def _apply(name, params, batch, cfg, capture=False):
    logits, inter, _, _ = _run(name, params, batch, cfg, capture)
    return logits, inter


def _random_batch(data: DataConfig, seed: int, batch: int = B) -> MLMBatch:
    """An MLMBatch-like input built in numpy: arbitrary ids, >= 1 key and >= 1 non-key per row."""
    rng = np.random.default_rng(seed)
    L, nv = data.seq_len, data.n_vocab
    inputs = rng.integers(0, nv, (batch, L)).astype(np.int32)
    targets = rng.integers(0, data.V, (batch, L)).astype(np.int32)
    key_mask = rng.random((batch, L)) < 0.6
    key_mask[:, 0] = True
    key_mask[:, 1] = False
    selected = rng.random((batch, L)) < 0.4
    selected[:, 1] = True
    valid = np.ones((batch, L), bool)
    kind = selected.astype(np.int32)
    topics = np.full((batch, L), -1, np.int32)
    theta = np.full((batch, data.T), 1 / data.T, np.float32)
    return MLMBatch(jnp.asarray(inputs), jnp.asarray(targets), jnp.asarray(selected),
                    jnp.asarray(key_mask), jnp.asarray(kind), jnp.asarray(topics),
                    jnp.asarray(theta), jnp.asarray(valid))


def _random_params(name: str, cfg: Config, seed: int, scale: float = 0.5) -> dict:
    """A params tree of get_model(name).init's structure (shapes from jax.eval_shape, so nothing is
    compiled) filled with N(0, scale^2) noise; LayerNorm scale around 1. No structure is hidden."""
    shapes = jax.eval_shape(lambda k: get_model(name).init(k, cfg), jax.random.PRNGKey(0))
    rng = np.random.default_rng(seed)
    out = {}
    for pname, sub in shapes.items():
        if pname == "ln":
            out[pname] = {"scale": 1 + scale * rng.standard_normal(sub["scale"].shape),
                          "bias": scale * rng.standard_normal(sub["bias"].shape)}
        else:
            out[pname] = scale * rng.standard_normal(sub.shape)
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), out)


# ---- float64 numpy reference -----------------------------------------------------------------

def _softmax(x):
    x = x - x.max(-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(-1, keepdims=True)


def np_forward(params, inputs, key_mask, cfg: Config, mean_pool=False):
    p = {k: (np.asarray(v, np.float64) if not isinstance(v, dict)
             else {kk: np.asarray(vv, np.float64) for kk, vv in v.items()})
         for k, v in params.items()}
    m = cfg.model
    inputs, key_mask = np.asarray(inputs), np.asarray(key_mask)
    E = p["E"]
    nv, d = E.shape
    H = m.n_heads
    dh = d // H
    h = E[inputs]  # (B, L, d)
    Bn, L = inputs.shape
    scores, attn, ctx_heads, val_heads = [], [], [], []
    for k in range(H):
        vals = h @ p["WV"][k]  # (B, L, dh)
        if mean_pool:
            w = key_mask.astype(np.float64)
            a = np.broadcast_to((w / w.sum(-1, keepdims=True))[:, None, :], (Bn, L, L))
        else:
            q = h @ p["WQ"][k]
            kk = h @ p["WK"][k]
            s = np.einsum("bie,bje->bij", q, kk) / np.sqrt(dh)
            scores.append(s)
            a = _softmax(np.where(key_mask[:, None, :], s, -np.inf))
        attn.append(a)
        val_heads.append(vals)
        ctx_heads.append(a @ vals)
    ctx = np.concatenate(ctx_heads, -1)  # heads side by side
    if m.residual:
        ctx = ctx + h
    if m.layernorm:
        mu = ctx.mean(-1, keepdims=True)
        var = ((ctx - mu) ** 2).mean(-1, keepdims=True)
        ctx = (ctx - mu) / np.sqrt(var + 1e-6) * p["ln"]["scale"] + p["ln"]["bias"]
    logits = ctx @ E.T if m.decoder == "tied" else ctx @ p["W_dec"]
    inter = {"embeddings": h, "attention": np.stack(attn, 1),
             "values": np.concatenate(val_heads, -1), "context": ctx, "logits": logits}
    if scores:
        inter["scores"] = np.stack(scores, 1)
    return logits, inter


def np_loss(logits, targets, selected, loss: str):
    targets, selected = np.asarray(targets), np.asarray(selected)
    if loss == "ce":
        mx = logits.max(-1, keepdims=True)
        logz = (mx + np.log(np.exp(logits - mx).sum(-1, keepdims=True)))[..., 0]
        per = logz - np.take_along_axis(logits, targets[..., None], -1)[..., 0]
    else:
        onehot = np.eye(logits.shape[-1])[targets]
        per = ((logits - onehot) ** 2).sum(-1)
    return per[selected].mean()


def _cfg(**model) -> Config:
    return Config(data=TINY_DATA, model=ModelConfig(init_scale=0.5, **model))


CASES = [
    dict(name="attention", n_heads=1, d_model=8, residual=False, decoder="trained", loss="ce"),
    dict(name="attention", n_heads=2, d_model=8, residual=True, decoder="trained", loss="squared"),
    dict(name="attention", n_heads=2, d_model=8, residual=False, decoder="tied", loss="ce"),
    dict(name="attention", n_heads=2, d_model=None, residual=True, decoder="identity", loss="ce"),
    dict(name="attention", n_heads=2, d_model=8, residual=True, layernorm=True, decoder="trained",
         loss="squared"),
    dict(name="embedding_only", n_heads=2, d_model=8, residual=True, decoder="trained",
         loss="squared"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_forward_and_loss_match_numpy_float64(case):
    cfg = _cfg(**case)
    params = _random_params(cfg.model.name, cfg, seed=1)
    if case["decoder"] == "tied":
        assert "W_dec" not in params
    if case["decoder"] == "identity":
        # the structural identity decoder (its init value is checked with the presets)
        params["W_dec"] = jnp.eye(cfg.d_model, cfg.data.n_vocab)
    batch = _random_batch(cfg.data, seed=2)
    logits, inter, loss_full, loss_masked = _run(cfg.model.name, params, batch, cfg)
    ref, ref_inter = np_forward(params, batch.inputs, batch.key_mask, cfg,
                                mean_pool=cfg.model.name == "embedding_only")
    assert np.abs(ref).max() > 0.5  # a non-trivial case (large init), far above the tolerance
    np.testing.assert_allclose(np.asarray(logits), ref, rtol=1e-5, atol=1e-5)
    for name, val in ref_inter.items():
        np.testing.assert_allclose(np.asarray(inter[name]), val, rtol=1e-5, atol=1e-5,
                                   err_msg=name)
    # the loss: mean over selected positions of CE or squared error to the one-hot target
    ref_loss = np_loss(ref, batch.targets, batch.selected, cfg.model.loss)
    assert ref_loss > 0.1
    np.testing.assert_allclose(float(loss_masked), ref_loss, rtol=1e-5)
    np.testing.assert_allclose(float(loss_full), ref_loss, rtol=1e-5)


def test_zero_query_key_equals_embedding_only():
    kw = dict(CASES[1])  # n_heads=2, d_model=8, residual, trained decoder (compiled above)
    del kw["name"]
    cfg_a, cfg_e = _cfg(name="attention", **kw), _cfg(name="embedding_only", **kw)
    pa = _random_params("attention", cfg_a, 3)  # init's structure, large weights
    pa["WQ"] = jnp.zeros_like(pa["WQ"])
    pa["WK"] = jnp.zeros_like(pa["WK"])
    pe = jax.eval_shape(lambda k: get_model("embedding_only").init(k, cfg_e),
                        jax.random.PRNGKey(1))
    assert set(pe) == {"E", "WV", "W_dec"}
    assert all(pe[k].shape == pa[k].shape for k in pe)
    pe = {k: pa[k] for k in pe}  # same E, W^V, decoder
    batch = _random_batch(cfg_a.data, seed=4)
    la, _ = _apply("attention", pa, batch, cfg_a, capture=True)
    le, _ = _apply("embedding_only", pe, batch, cfg_e, capture=True)
    assert np.abs(np.asarray(la)).max() > 1.0
    np.testing.assert_allclose(np.asarray(la), np.asarray(le), rtol=0, atol=1e-6)
    # and both differ once W^Q, W^K are non-zero (the comparison can fail)
    pa2 = dict(pa, WQ=jnp.ones_like(pa["WQ"]), WK=jnp.ones_like(pa["WK"]))
    la2, _ = _apply("attention", pa2, batch, cfg_a, capture=True)
    assert np.abs(np.asarray(la2) - np.asarray(le)).max() > 1e-3


def test_capture_intermediates_shapes_and_attention_rows():
    cfg = _cfg(**CASES[1])  # n_heads=2, d_model=8
    params = _random_params("attention", cfg, seed=5)
    batch = _random_batch(cfg.data, seed=6)
    logits, inter = _apply("attention", params, batch, cfg, capture=True)
    Bn, L, d, H, nv = B, cfg.data.seq_len, 8, 2, cfg.data.n_vocab
    expected = {"embeddings": (Bn, L, d), "scores": (Bn, H, L, L), "attention": (Bn, H, L, L),
                "values": (Bn, L, d), "context": (Bn, L, d), "logits": (Bn, L, nv)}
    assert {k: tuple(v.shape) for k, v in inter.items()} == expected
    assert logits.shape == (Bn, L, nv)
    np.testing.assert_array_equal(np.asarray(inter["logits"]), np.asarray(logits))
    a = np.asarray(inter["attention"], np.float64)
    km = np.asarray(batch.key_mask)[:, None, None, :]
    assert np.all(a[np.broadcast_to(~km, a.shape)] == 0.0)
    np.testing.assert_allclose((a * km).sum(-1), 1.0, rtol=0, atol=1e-6)
    # without capture: same logits, nothing captured
    plain, nothing = _apply("attention", params, batch, cfg)
    assert nothing == {}
    np.testing.assert_array_equal(np.asarray(plain), np.asarray(logits))


def test_row_without_keys_attends_to_no_position():
    """key_mask is "positions that may be attended to"; a row can have none.

    Reachable from valid configs: start_end=false with every content word selected, e.g.
    DataConfig(N_min=1, N_max=3, start_end=False) with mask.p_mask=1.0 (or, with the default
    p_mask=0.15, any short document whose words are all selected). Then no position may be
    attended to: the attention row must stay 0 on every (non-key) position, as the
    embedding_only model's mean pool gives (context 0), instead of spreading over selected
    positions (which can show the target itself under "keep") and PAD.
    """
    kw = dict(CASES[1])
    del kw["name"]
    cfg_a, cfg_e = _cfg(name="attention", **kw), _cfg(name="embedding_only", **kw)
    params = _random_params("attention", cfg_a, seed=8)
    batch = _random_batch(cfg_a.data, seed=9)
    km = np.asarray(batch.key_mask).copy()
    km[0] = False  # document 0: no key at all
    batch = batch._replace(key_mask=jnp.asarray(km))
    _, inter = _apply("attention", params, batch, cfg_a, capture=True)
    a = np.asarray(inter["attention"])
    # rows with keys are unaffected: 0 on non-keys, sum 1 over keys
    assert np.all(a[1:][np.broadcast_to(~km[1:, None, None, :], a[1:].shape)] == 0.0)
    # the keyless row attends nowhere
    assert np.all(a[0] == 0.0), a[0, 0, 0]
    # and agrees with the embedding_only model once W^Q = W^K = 0
    pa = dict(params, WQ=jnp.zeros_like(params["WQ"]), WK=jnp.zeros_like(params["WK"]))
    la, _ = _apply("attention", pa, batch, cfg_a, capture=True)
    le, _ = _apply("embedding_only", {k: params[k] for k in ("E", "WV", "W_dec")}, batch, cfg_e,
                   capture=True)
    np.testing.assert_allclose(np.asarray(la), np.asarray(le), rtol=0, atol=1e-6)


# ---- presets' fixed matrices -------------------------------------------------------------------

def _topic_block(cfg: Config) -> np.ndarray:
    """(d, d) with 1 where both indices are content words of the same topic (word // v)."""
    d, V, v = cfg.d_model, cfg.data.V, cfg.data.v
    m = np.zeros((d, d))
    for i in range(V):
        for j in range(V):
            m[i, j] = float(i // v == j // v)
    return m


def _merged_wv(WV):
    """(H, d, dh) -> (d, H*dh): the full W^V acting on the concatenated heads."""
    WV = np.asarray(WV)
    return np.concatenate(list(WV), axis=1)


def _assert_normal_init(x, std, name):
    """Mean 0 (SE std/sqrt(n)) and sample std `std` (SE ~ std/sqrt(2n)) of a normal init."""
    x = np.asarray(x, np.float64).ravel()
    n = x.size
    assert abs(x.mean()) < Z * std / np.sqrt(n), (name, x.mean())
    assert abs(x.std() - std) < Z * std / np.sqrt(2 * n), (name, x.std(), std)


def test_preset_A_fixed_matrices():
    # a width above the vocabulary and two heads: rectangular one-hot E, W^V split across heads
    cfg = preset("A", ["model.d_model=112", "model.n_heads=2"])
    nv, d = cfg.data.n_vocab, cfg.d_model
    assert (nv, d) == (104, 112)
    params = get_model(cfg.model.name).init(jax.random.PRNGKey(0), cfg)
    np.testing.assert_array_equal(np.asarray(params["E"]), np.eye(nv, d))
    np.testing.assert_array_equal(_merged_wv(params["WV"]), _topic_block(cfg))
    np.testing.assert_array_equal(np.asarray(params["W_dec"]), np.eye(d, nv))
    for g in ("WQ", "WK"):
        _assert_normal_init(params[g], cfg.model.init_scale, g)
    assert get_model(cfg.model.name).fixed_groups(cfg) == {"embedding", "value", "decoder"}
    # the captured values of a one-hot input are its row of the topic-block matrix (2 heads)
    batch = _random_batch(cfg.data, seed=7, batch=2)
    _, inter = _apply("attention", params, batch, cfg, capture=True)
    np.testing.assert_array_equal(np.asarray(inter["values"]),
                                  _topic_block(cfg)[np.asarray(batch.inputs)])


def test_preset_V_fixed_matrices():
    cfg = preset("V")
    nv, d = cfg.data.n_vocab, cfg.d_model
    params = get_model(cfg.model.name).init(jax.random.PRNGKey(0), cfg)
    np.testing.assert_array_equal(np.asarray(params["E"]), np.eye(nv, d))
    np.testing.assert_array_equal(np.asarray(params["W_dec"]), np.eye(d, nv))
    np.testing.assert_array_equal(np.asarray(params["WQ"]), 0.0)
    np.testing.assert_array_equal(np.asarray(params["WK"]), 0.0)
    _assert_normal_init(params["WV"], cfg.model.init_scale, "WV")
    assert get_model(cfg.model.name).fixed_groups(cfg) == {"embedding", "query", "key", "decoder"}


def test_preset_E_fixed_matrices():
    cfg = preset("E")
    nv, d = cfg.data.n_vocab, cfg.d_model
    params = get_model(cfg.model.name).init(jax.random.PRNGKey(0), cfg)
    np.testing.assert_array_equal(_merged_wv(params["WV"]), np.eye(d))
    np.testing.assert_array_equal(np.asarray(params["W_dec"]), np.eye(d, nv))
    np.testing.assert_array_equal(np.asarray(params["WQ"]), 0.0)
    np.testing.assert_array_equal(np.asarray(params["WK"]), 0.0)
    _assert_normal_init(params["E"], cfg.model.init_scale, "E")
    assert get_model(cfg.model.name).fixed_groups(cfg) == {"query", "key", "value", "decoder"}


def test_preset_F_small_init_everywhere():
    cfg = preset("F")
    params = get_model(cfg.model.name).init(jax.random.PRNGKey(0), cfg)
    assert set(params) == {"E", "WQ", "WK", "WV", "W_dec"}
    for name, x in params.items():
        _assert_normal_init(x, 0.02, name)
    assert get_model(cfg.model.name).fixed_groups(cfg) == set()
