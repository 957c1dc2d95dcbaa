"""The paper's transformer family (BRIEF §3) as a Flax linen module, and its two variants.

`attention`: token embedding (+ optional positional embedding), `model.n_layers` attention
layers (each optionally with a residual and a LayerNorm), a decoder. `embedding_only`: the same
with uniform attention over the keys and no W^Q/W^K at all. Keys are restricted by the batch's
key mask and, for the causal objective, to the query's prefix (layers.query_key_mask).

Fixed matrices (one-hot embedding, identity/topic-block W^V, identity decoder, zero W^Q/W^K for
uniform attention, sinusoidal positions) are ordinary parameters with constant init; training
freezes them in optax, so probes read every matrix from `params` the same way.

Parameter names: layer 1 owns WQ, WK, WV (and "ln"); layer l >= 2 owns WQ_l{l}, ... ("ln_l{l}"),
so a one-layer model's params (and checkpoints) keep their flat names.
"""
from __future__ import annotations

import re

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from topicdyn.config import Config
from topicdyn.data import topic_labels
from topicdyn.models import register
from topicdyn.models import variant as tr
from topicdyn.models.layers import attention_layer, const, normal, query_key_mask, sinusoidal_table
from topicdyn.models.variant import LinenVariant, trainable_groups


def topic_block_matrix(cfg: Config) -> np.ndarray:
    """(d, d): 1 between two content words of the same topic, 0 elsewhere (specials 0). The
    topics are the probes' labels (data.topic_labels); a word without one (-1, e.g. below an
    LDA fit's confidence threshold) is a block of its own."""
    d, V = cfg.d_model, cfg.data.V
    wt = topic_labels(cfg.data)
    m = np.zeros((d, d), np.float32)
    m[:V, :V] = ((wt[:, None] == wt[None, :]) & (wt[:, None] >= 0)).astype(np.float32)
    m[np.arange(V), np.arange(V)] = 1.0
    return m


def layer_suffix(layer: int) -> str:
    """Parameter-name suffix of layer `layer` (1-based): "" for the first."""
    return "" if layer == 1 else f"_l{layer}"


class TopicTransformer(nn.Module):
    cfg: Config
    mean_pool: bool = False  # embedding_only: no W^Q/W^K, uniform attention over the key set

    @nn.compact
    def __call__(self, inputs, key_mask):
        cfg, m = self.cfg, self.cfg.model
        d, H, nv = cfg.d_model, m.n_heads, cfg.data.n_vocab
        dh = d // H
        if m.embedding == "onehot":
            E = self.param("E", const(np.eye(nv, d, dtype=np.float32)), (nv, d))
        else:
            E = self.param("E", normal(m.init_std("embedding")), (nv, d))
        h = E[inputs]  # (B, L, d)
        L = inputs.shape[1]
        if m.positional == "learned":
            h = h + self.param("P", normal(m.init_std("position")), (cfg.data.seq_len, d))[:L]
        elif m.positional == "sinusoidal":
            h = h + self.param("P", const(sinusoidal_table(cfg.data.seq_len, d)),
                               (cfg.data.seq_len, d))[:L]
        self.sow("intermediates", "embeddings", h)

        if m.value == "trained":
            value_init = normal(m.init_std("value"))
        else:
            full = np.eye(d, dtype=np.float32) if m.value == "identity" else topic_block_matrix(cfg)
            value_init = const(full.reshape(d, H, dh).transpose(1, 0, 2))
        qk_init = (lambda g: normal(m.init_std(g))) if m.attention == "trained" else \
            (lambda g: nn.initializers.zeros)
        keys = query_key_mask(key_mask, cfg.mask.objective)
        for layer in range(1, m.n_layers + 1):
            sfx = layer_suffix(layer)
            out = attention_layer(self, h, keys, H=H, suffix=sfx, value_init=value_init,
                                  qk_init=qk_init, mean_pool=self.mean_pool, tag=sfx)
            if m.residual:
                out = out + h
            if m.layernorm:
                out = nn.LayerNorm(name=f"ln{sfx}")(out)
            h = out
        self.sow("intermediates", "context", h)

        if m.decoder == "tied":
            logits = h @ E.T
        elif m.decoder == "identity":
            Wd = self.param("W_dec", const(np.eye(d, nv, dtype=np.float32)), (d, nv))
            logits = h @ Wd
        else:
            logits = h @ self.param("W_dec", normal(m.init_std("decoder")), (d, nv))
        self.sow("intermediates", "logits", logits)
        return logits


_GROUP_OF = {"E": "embedding", "P": "position", "WQ": "query", "WK": "key", "WV": "value",
             "W_dec": "decoder", "ln": "layernorm"}
_LAYER_NAME = re.compile(r"^(WQ|WK|WV|ln)(_l[2-9]\d*)?$")


class _Family(LinenVariant):
    groups = ("embedding", "position", "query", "key", "value", "decoder", "layernorm")
    mean_pool = False

    def module(self, cfg):
        return TopicTransformer(cfg, self.mean_pool)

    def param_group(self, path):
        top = path[0]
        if top in _GROUP_OF:
            return _GROUP_OF[top]
        match = _LAYER_NAME.match(top)
        if match:
            return _GROUP_OF[match.group(1)]
        raise KeyError(f"variant {self.name!r}: parameter {'/'.join(path)!r} has no group")

    def present_groups(self, cfg):
        m = cfg.model
        out = {"embedding", "value", "decoder"}
        if not self.mean_pool:
            out |= {"query", "key"}
        if m.positional != "none":
            out.add("position")
        if m.layernorm:
            out.add("layernorm")
        return out

    def fixed_groups(self, cfg):
        m = cfg.model
        fixed = set()
        if m.embedding == "onehot":
            fixed.add("embedding")
        if not self.mean_pool and m.attention == "uniform":
            fixed |= {"query", "key"}
        if m.value != "trained":
            fixed.add("value")
        if m.decoder == "identity":
            fixed.add("decoder")
        if m.positional == "sinusoidal":
            fixed.add("position")
        return fixed

    def traits(self, cfg):
        m, t = cfg.model, set()
        train = trainable_groups(self, cfg)
        one = m.n_layers == 1
        if one:
            t.add(tr.ONE_LAYER)
        if m.positional == "none":
            t.add(tr.NO_POSITIONS)
        t.add(tr.MLM if cfg.mask.objective == "mlm" else tr.CAUSAL)
        if one and m.positional == "none" and cfg.mask.objective == "mlm":
            t.add(tr.BAG_OF_WORDS)
        if self.mean_pool or (m.attention == "uniform" and not {"query", "key"} & train):
            t.add(tr.UNIFORM_ATTENTION)
        if (one and tr.UNIFORM_ATTENTION in t and cfg.mask.objective == "mlm"
                and cfg.mask.key_set == "unselected" and not m.residual):
            # uniform weights never read the query; a selected position is no key of any query
            t.add(tr.QUERY_BLIND)
        if {"query", "key"} & train:
            t.add(tr.TRAINED_ATTENTION)
        if "value" in train:
            t.add(tr.TRAINED_VALUE)
        if "embedding" in train:
            t.add(tr.TRAINED_EMBEDDING)
        if m.value == "topic_block" and "value" not in train:
            t.add(tr.TOPIC_BLOCK_VALUE)
        if not m.residual and not m.layernorm and m.decoder != "tied":
            t.add(tr.LINEAR_READOUT)
        if (tr.BAG_OF_WORDS in t and tr.TOPIC_BLOCK_VALUE in t and m.n_heads == 1
                and not m.residual and not m.layernorm and not {"embedding", "decoder"} & train
                and m.embedding == "onehot" and m.decoder == "identity"):
            t.add(tr.PAPER_STAGE2)
        t.add(tr.VALUE_MAP)
        t.add(tr.CONTEXT_VECTOR)
        if one and not m.residual and not m.layernorm:
            t.add(tr.AGGREGATIVE)
        if not self.mean_pool:
            t.add(tr.SCORE_MAP)
        return frozenset(t)

    def matrices(self, params, cfg):
        E = params["E"]
        Wd = E.T if cfg.model.decoder == "tied" else params["W_dec"]
        out = {"E": E}
        for layer in range(1, cfg.model.n_layers + 1):
            s = layer_suffix(layer)
            H, d, dh = params[f"WV{s}"].shape
            WV = jnp.transpose(params[f"WV{s}"], (1, 0, 2)).reshape(d, H * dh)
            out[f"value_map/{layer}"] = E @ WV @ Wd
            if f"WQ{s}" in params:
                out[f"score_map/{layer}"] = jnp.einsum(
                    "vd,hde,hfe,wf->vw", E, params[f"WQ{s}"], params[f"WK{s}"], E) / np.sqrt(dh)
        return out

    def tracked(self, params, cfg):
        out = {n: params[n] for n in ("E", "P", "W_dec") if n in params}
        for layer in range(1, cfg.model.n_layers + 1):
            s = layer_suffix(layer)
            out[f"WV{s}"] = params[f"WV{s}"]
            if f"WQ{s}" in params:
                out[f"WQ{s}"], out[f"WK{s}"] = params[f"WQ{s}"], params[f"WK{s}"]
                out[f"QK{s}"] = jnp.einsum("hde,hfe->df", params[f"WQ{s}"], params[f"WK{s}"])
        return out


@register
class Attention(_Family):
    """The paper's model: softmax attention with W^Q, W^K (trained or uniform at zero)."""
    name = "attention"


@register
class EmbeddingOnly(_Family):
    """Uniform attention over the keys without W^Q/W^K parameters."""
    name = "embedding_only"
    mean_pool = True
