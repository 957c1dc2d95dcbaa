"""docs/EXTENDING.md's worked example: a variant in one file, outside the package.

`gated`: the paper's one-layer model with a learned scalar gate on the attention output,
logits = (g * attn(h)) W_dec. Train it with

    PYTHONPATH=docs topicdyn train model.name=example_variant:GATED train.steps=200

No fast kernel knows it (kernels.FAST is exact only for model.name in {attention,
embedding_only}), so the definition below is what trains; claims that need traits it does not
declare are reported "not applicable".
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from topicdyn.models import variant as tr
from topicdyn.models.layers import attention_layer, normal, query_key_mask
from topicdyn.models.variant import LinenVariant


class GatedModule(nn.Module):
    cfg: object

    @nn.compact
    def __call__(self, inputs, key_mask):
        cfg, m = self.cfg, self.cfg.model
        d, nv = cfg.d_model, cfg.data.n_vocab
        E = self.param("E", normal(m.init_std("embedding")), (nv, d))
        h = E[inputs]
        keys = query_key_mask(key_mask, cfg.mask.objective)
        out = attention_layer(self, h, keys, H=m.n_heads, suffix="",
                              value_init=normal(m.init_std("value")),
                              qk_init=lambda g: normal(m.init_std(g)))
        gate = self.param("gate", nn.initializers.ones, ())
        return (gate * out) @ self.param("W_dec", normal(m.init_std("decoder")), (d, nv))


class Gated(LinenVariant):
    name = "gated"
    groups = ("embedding", "query", "key", "value", "decoder", "gate")
    _groups = {"E": "embedding", "WQ": "query", "WK": "key", "WV": "value",
               "W_dec": "decoder", "gate": "gate"}

    def module(self, cfg):
        return GatedModule(cfg)

    def param_group(self, path):
        return self._groups[path[0]]  # an unknown parameter is a KeyError naming it

    def traits(self, cfg):
        t = {tr.ONE_LAYER, tr.NO_POSITIONS, tr.TRAINED_ATTENTION, tr.TRAINED_VALUE,
             tr.TRAINED_EMBEDDING, tr.VALUE_MAP, tr.SCORE_MAP}
        t.add(tr.MLM if cfg.mask.objective == "mlm" else tr.CAUSAL)
        return frozenset(t)

    def matrices(self, params, cfg):
        E, WQ, WK, WV = params["E"], params["WQ"], params["WK"], params["WV"]
        dh = WV.shape[-1]
        return {"E": E,
                "value_map/1": params["gate"] * (E @ WV[0] @ params["W_dec"]),
                "score_map/1": (E @ WQ[0]) @ (E @ WK[0]).T / jnp.sqrt(dh)}

    def tracked(self, params, cfg):
        return {"E": params["E"], "WV": params["WV"], "WQ": params["WQ"], "WK": params["WK"],
                "QK": params["WQ"][0] @ params["WK"][0].T, "W_dec": params["W_dec"]}


GATED = Gated()
