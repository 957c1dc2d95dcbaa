"""One-layer transformer without positional encoding (BRIEF §3), as a Flax linen module.

Row-vector convention: h_i = E[x_i] (d,), q = h W^Q, k = h W^K, v = h W^V, so
s_ij = <q_i, k_j> / sqrt(d_head) and the bilinear score matrix in input space is W^Q W^K^T
(= the paper's W^K^T W^Q in its column convention). Keys are restricted by batch.key_mask.
Fixed matrices (one-hot embedding, identity/topic-block W^V, identity decoder, zero W^Q/W^K for
uniform attention) are ordinary parameters with constant init; training freezes them in optax, so
probes read every matrix from `params` the same way.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from topicdyn.config import Config
from topicdyn.data import word_topic
from topicdyn.models import ModelDef, register

NEG_INF = -1e30


def _normal(std):
    return nn.initializers.normal(std) if std > 0 else nn.initializers.zeros


def _const(value):
    return lambda key, shape, dtype=jnp.float32: jnp.asarray(value, dtype).reshape(shape)


def topic_block_matrix(cfg: Config) -> np.ndarray:
    """(d, d): 1 between two content words of the same topic, 0 elsewhere (specials 0)."""
    d, V = cfg.d_model, cfg.data.V
    wt = word_topic(cfg.data)
    m = np.zeros((d, d), np.float32)
    m[:V, :V] = (wt[:, None] == wt[None, :]).astype(np.float32)
    return m


class TopicTransformer(nn.Module):
    cfg: Config
    mean_pool: bool = False  # embedding_only: no W^Q/W^K, uniform attention over the key set

    @nn.compact
    def __call__(self, inputs, key_mask):
        cfg, m = self.cfg, self.cfg.model
        d, H, nv = cfg.d_model, m.n_heads, cfg.data.n_vocab
        dh = d // H
        if m.embedding == "onehot":
            E = self.param("E", _const(np.eye(nv, d, dtype=np.float32)), (nv, d))
        else:
            E = self.param("E", _normal(m.init_std("embedding")), (nv, d))
        h = E[inputs]  # (B, L, d)
        self.sow("intermediates", "embeddings", h)

        if m.value == "trained":
            WV = self.param("WV", _normal(m.init_std("value")), (H, d, dh))
        else:
            full = np.eye(d, dtype=np.float32) if m.value == "identity" else topic_block_matrix(cfg)
            WV = self.param("WV", _const(full.reshape(d, H, dh).transpose(1, 0, 2)), (H, d, dh))
        vals = jnp.einsum("bld,hde->bhle", h, WV)
        self.sow("intermediates", "values", _merge(vals))

        B, L = inputs.shape
        if self.mean_pool:
            w = key_mask.astype(h.dtype)
            attn = jnp.broadcast_to((w / jnp.maximum(w.sum(-1, keepdims=True), 1.0))[:, None, None],
                                    (B, H, L, L))
        else:
            qk_init = (lambda g: _normal(m.init_std(g))) if m.attention == "trained" else \
                (lambda g: nn.initializers.zeros)
            WQ = self.param("WQ", qk_init("query"), (H, d, dh))
            WK = self.param("WK", qk_init("key"), (H, d, dh))
            q = jnp.einsum("bld,hde->bhle", h, WQ)
            k = jnp.einsum("bld,hde->bhle", h, WK)
            scores = jnp.einsum("bhie,bhje->bhij", q, k) / np.sqrt(dh)
            self.sow("intermediates", "scores", scores)
            keys = key_mask[:, None, None, :]
            # the final where zeroes a query with no keys at all (short documents, every word
            # selected); a bare softmax would spread it over PAD and selected positions
            attn = jnp.where(keys, jax.nn.softmax(jnp.where(keys, scores, NEG_INF), axis=-1), 0.0)
        self.sow("intermediates", "attention", attn)
        out = _merge(jnp.einsum("bhij,bhje->bhie", attn, vals))  # (B, L, d)
        if m.residual:
            out = out + h
        if m.layernorm:
            out = nn.LayerNorm(name="ln")(out)
        self.sow("intermediates", "context", out)

        if m.decoder == "tied":
            logits = out @ E.T
        elif m.decoder == "identity":
            Wd = self.param("W_dec", _const(np.eye(d, nv, dtype=np.float32)), (d, nv))
            logits = out @ Wd
        else:
            logits = out @ self.param("W_dec", _normal(m.init_std("decoder")), (d, nv))
        self.sow("intermediates", "logits", logits)
        return logits


def _merge(x):
    """(B, H, L, e) -> (B, L, H*e): concatenate heads."""
    B, H, L, e = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, L, H * e)


def _factory(mean_pool: bool):
    def init(key, cfg: Config):
        """Parameters of the model for cfg: a dict {name: array}."""
        L = cfg.data.seq_len
        dummy = jnp.zeros((1, L), jnp.int32)
        return TopicTransformer(cfg, mean_pool).init(key, dummy, jnp.ones((1, L), bool))["params"]

    def apply(params, batch, cfg: Config, capture: bool = False):
        """(logits (B, L, n_vocab), intermediates) for an MLMBatch-like object."""
        module = TopicTransformer(cfg, mean_pool)
        if not capture:
            return module.apply({"params": params}, batch.inputs, batch.key_mask), {}
        logits, state = module.apply({"params": params}, batch.inputs, batch.key_mask,
                                     mutable=["intermediates"])
        inter = {k: v[0] for k, v in state["intermediates"].items()}
        return logits, inter

    return ModelDef(init, apply)


register("attention")(lambda: _factory(False))
register("embedding_only")(lambda: _factory(True))

# parameter name -> group (optimiser masks, per-group lr, norms)
PARAM_GROUP = {"E": "embedding", "WQ": "query", "WK": "key", "WV": "value", "W_dec": "decoder",
               "ln": "layernorm"}


def fixed_groups(cfg: Config) -> set[str]:
    """Groups that the model variant holds fixed (structural constants)."""
    m = cfg.model
    fixed = set()
    if m.embedding == "onehot":
        fixed.add("embedding")
    if m.attention == "uniform" or cfg.model.name == "embedding_only":
        fixed |= {"query", "key"}
    if m.value != "trained":
        fixed.add("value")
    if m.decoder == "identity":
        fixed.add("decoder")
    return fixed
