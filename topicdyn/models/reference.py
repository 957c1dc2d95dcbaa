"""`reference`: a BERT-style one-layer model in the spirit of the paper authors' code (BRIEF §5).

Differences from `attention` (each one a candidate for why their attention statistic differs):
a learned token-type vector added to every embedding, LayerNorm on the embedding output (eps
1e-12, BERT's, learned gain and bias), biases on W^Q, W^K, W^V and on the decoder, and
PyTorch-default initial scales: a trained embedding and the token-type vector N(0, 1), every
linear map and bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)). START is a key like any unselected
position (the attention "sink" of their inputs). No W^O, residual, feed-forward block or
positions: a bag-of-words model, though no fast kernel is declared for it, so its definition
below is what trains.

The authors' runs use a frozen one-hot embedding and a frozen identity decoder with zero bias:
`model.embedding=onehot model.decoder=identity` (honoured here, as is model.attention=uniform:
W^Q, W^K and their biases frozen at zero).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from topicdyn.models import register
from topicdyn.models import variant as tr
from topicdyn.models.layers import attention_layer, const, query_key_mask
from topicdyn.models.variant import LinenVariant, trainable_groups

LN_EPS = 1e-12


def torch_uniform(fan_in: int):
    """PyTorch's nn.Linear default for weights and biases: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / np.sqrt(fan_in)
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound,
                                                                    bound)


class ReferenceBERT(nn.Module):
    cfg: object

    @nn.compact
    def __call__(self, inputs, key_mask):
        cfg, m = self.cfg, self.cfg.model
        d, H, nv = cfg.d_model, m.n_heads, cfg.data.n_vocab
        if m.embedding == "onehot":
            E = self.param("E", const(np.eye(nv, d, dtype=np.float32)), (nv, d))
        else:
            E = self.param("E", nn.initializers.normal(1.0), (nv, d))
        tt = self.param("token_type", nn.initializers.normal(1.0), (d,))
        h = nn.LayerNorm(epsilon=LN_EPS, name="ln_emb")(E[inputs] + tt)
        self.sow("intermediates", "embeddings", h)
        keys = query_key_mask(key_mask, cfg.mask.objective)
        u = torch_uniform(d)
        uniform = m.attention == "uniform"
        zeros = nn.initializers.zeros
        out = attention_layer(self, h, keys, H=H, suffix="", value_init=u,
                              qk_init=lambda g: zeros if uniform else u, bias=True,
                              bias_init=u, qk_bias_init=zeros if uniform else u)
        self.sow("intermediates", "context", out)
        if m.decoder == "identity":
            Wd = self.param("W_dec", const(np.eye(d, nv, dtype=np.float32)), (d, nv))
            logits = out @ Wd + self.param("b_dec", zeros, (nv,))
        else:
            logits = out @ self.param("W_dec", u, (d, nv)) + self.param("b_dec", u, (nv,))
        self.sow("intermediates", "logits", logits)
        return logits


@register
class Reference(LinenVariant):
    """BERT-style one layer after the authors' code (module doc)."""
    name = "reference"
    groups = ("embedding_table", "embedding", "layernorm", "query", "key", "value", "decoder")
    # the token table E is its own group so a one-hot E stays frozen while the token-type
    # vector ("embedding") trains, as in the authors' runs
    _groups = {"E": "embedding_table", "token_type": "embedding", "ln_emb": "layernorm",
               "WQ": "query", "bQ": "query", "WK": "key", "bK": "key", "WV": "value",
               "bV": "value", "W_dec": "decoder", "b_dec": "decoder"}

    def module(self, cfg):
        return ReferenceBERT(cfg)

    def param_group(self, path):
        if path[0] not in self._groups:
            raise KeyError(f"variant 'reference': parameter {'/'.join(path)!r} has no group")
        return self._groups[path[0]]

    def fixed_groups(self, cfg):
        m, fixed = cfg.model, set()
        if m.embedding == "onehot":
            fixed.add("embedding_table")
        if m.attention == "uniform":
            fixed |= {"query", "key"}
        if m.decoder == "identity":
            fixed.add("decoder")
        return fixed

    def check_config(self, cfg):
        from topicdyn.config import ConfigError

        m = cfg.model
        for f, ok in (("value", ("trained",)), ("decoder", ("trained", "identity")),
                      ("embedding", ("trained", "onehot")), ("attention", ("trained", "uniform"))):
            if getattr(m, f) not in ok:
                raise ConfigError(f"model.{f}: must be one of {', '.join(ok)} for "
                                  f"model.name=reference, got {getattr(m, f)!r}")
        for f in ("residual", "layernorm"):
            if getattr(m, f):
                raise ConfigError(f"model.{f}: must be false for model.name=reference (its "
                                  "LayerNorm is on the embedding output)")
        if m.n_layers != 1 or m.positional != "none":
            raise ConfigError("model.n_layers/positional: model.name=reference is one layer "
                              "without positions")

    def traits(self, cfg):
        train = trainable_groups(self, cfg)
        t = {tr.ONE_LAYER, tr.NO_POSITIONS, tr.VALUE_MAP, tr.SCORE_MAP,
             tr.MLM if cfg.mask.objective == "mlm" else tr.CAUSAL}
        if cfg.mask.objective == "mlm":
            t.add(tr.BAG_OF_WORDS)  # LayerNorm acts per token: still (query token, key multiset)
        for g, trait in (("query", tr.TRAINED_ATTENTION), ("value", tr.TRAINED_VALUE),
                         ("embedding_table", tr.TRAINED_EMBEDDING)):
            if g in train:
                t.add(trait)
        return frozenset(t)

    def _table(self, params):
        """(n_vocab, d): each token's embedding after the token-type vector and LayerNorm."""
        x = params["E"] + params["token_type"]
        return nn.LayerNorm(epsilon=LN_EPS).apply({"params": params["ln_emb"]}, x)

    def matrices(self, params, cfg):
        """E: the normalised embedding table; score_map: exact token-pair scores (biases
        included); value_map: Ê W^V W_dec without the biases (they add a constant per column)."""
        Eh = self._table(params)
        H, d, dh = params["WV"].shape
        WV = jnp.transpose(params["WV"], (1, 0, 2)).reshape(d, H * dh)
        q = jnp.einsum("vd,hde->hve", Eh, params["WQ"]) + params["bQ"][:, None]
        k = jnp.einsum("vd,hde->hve", Eh, params["WK"]) + params["bK"][:, None]
        return {"E": Eh, "value_map/1": Eh @ WV @ params["W_dec"],
                "score_map/1": jnp.einsum("hve,hwe->vw", q, k) / np.sqrt(dh)}

    def tracked(self, params, cfg):
        return {"E": params["E"], "WV": params["WV"], "WQ": params["WQ"], "WK": params["WK"],
                "QK": jnp.einsum("hde,hfe->df", params["WQ"], params["WK"]),
                "W_dec": params["W_dec"]}
