"""The variant protocol: everything that a model family *is*, in one object.

A `Variant` owns its definition (`init`, `apply`), the parameter groups of its parameters (for
optimiser masks, per-group learning rates and norms), the groups it holds fixed for a config, the
named matrices probes read, and the **traits** that theory, probes and claims may rely on. Nothing
outside the variant guesses any of these from config fields.

Traits are plain strings (constants below). A trait is a promise about the model *as defined*
for a config, e.g. BAG_OF_WORDS: the output at a query depends only on its input token and the
multiset of its keys' tokens. A claim or probe that needs a trait the variant does not declare is
reported "not applicable"; it never runs against the wrong model.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

# ---- traits ---------------------------------------------------------------------------------
ONE_LAYER = "one_layer"            # a single attention layer
NO_POSITIONS = "no_positions"      # no positional information of any kind
MLM = "mlm"                        # masked-token objective (loss at selected positions)
CAUSAL = "causal"                  # next-token objective (per-query prefix key mask)
BAG_OF_WORDS = "bag_of_words"      # output depends on (query token, key multiset) only
UNIFORM_ATTENTION = "uniform_attention"  # attention is uniform over the keys (fixed)
QUERY_BLIND = "query_blind"        # the output at a selected position ignores the token shown
                                   # there: its reachable floor is bayes/visible, not bayes/query
TRAINED_ATTENTION = "trained_attention"  # W^Q, W^K are trained
TRAINED_VALUE = "trained_value"    # W^V is trained
TRAINED_EMBEDDING = "trained_embedding"
TOPIC_BLOCK_VALUE = "topic_block_value"  # W^V is the frozen topic-block matrix
LINEAR_READOUT = "linear_readout"  # logits = (pooled keys) @ linear map: no LN, residual, biases
PAPER_STAGE2 = "paper_stage2"      # one-hot E, block W^V, identity decoder, one head (regime A)
SCORE_MAP = "score_map"            # the variant exposes a vocabulary-space score map
VALUE_MAP = "value_map"            # ... and a vocabulary-space value map
AGGREGATIVE = "aggregative"        # one attention layer, no residual, no LayerNorm: the context
                                   # vector is an attention-weighted sum of per-key values
CONTEXT_VECTOR = "context_vector"  # apply(capture=True) sows "context" (B, L, d): the vector
                                   # the decoder reads at each position (embedding-space probes)


class Variant:
    """Base class of a model family. Subclasses set `name` and `groups` and implement `init`,
    `apply`, `param_group`, `fixed_groups`, `traits` and `matrices`."""

    name: str = ""
    groups: tuple[str, ...] = ()  # every parameter group the family may have

    # ---- definition ---------------------------------------------------------------------------
    def init(self, key: jax.Array, cfg) -> dict:
        """Parameters for cfg: a nested dict of arrays."""
        raise NotImplementedError

    def apply(self, params: dict, batch, cfg, capture: bool = False) -> tuple[jax.Array, dict]:
        """(logits (B, L, n_vocab), intermediates) for an MLMBatch-like batch; intermediates holds
        the named activations (sown by the module) when capture=True, else {}."""
        raise NotImplementedError

    # ---- parameters ---------------------------------------------------------------------------
    def param_group(self, path: tuple[str, ...]) -> str:
        """Group of the parameter at `path` (keys from the params root). Unknown paths are an
        error naming the path: a parameter must never be trained under a guessed group."""
        raise NotImplementedError

    def fixed_groups(self, cfg) -> set[str]:
        """Groups this config holds fixed (structural constants: one-hot E, identity decoder,
        ...). Only groups of `groups`."""
        return set()

    def present_groups(self, cfg) -> set[str]:
        """Groups that init(cfg) actually creates (default: all of `groups`)."""
        return set(self.groups)

    def check_config(self, cfg) -> None:
        """Raise ConfigError (naming the field) for a config this variant cannot build."""

    # ---- what the rest of the simulator may rely on -------------------------------------------
    def traits(self, cfg) -> frozenset[str]:
        """The traits (constants of this module) of the model as defined for cfg."""
        return frozenset()

    def matrices(self, params: dict, cfg) -> dict[str, Any]:
        """Named vocabulary-space matrices for probes, for one member's params:
        "E" (n_vocab, d) where there is a token embedding, and per layer l (1-based)
        "value_map/l" (n_vocab, n_vocab) and, with trained or fixed attention, "score_map/l"
        (n_vocab, n_vocab). Layers after the first are read through the embedding (their direct
        path), which the key names say."""
        return {}

    def tracked(self, params: dict, cfg) -> dict[str, jax.Array]:
        """Named matrices whose change from init the dynamics probe tracks (one member)."""
        return {}


class LinenVariant(Variant):
    """A Variant whose definition is a linen module called as module(inputs, key_mask)."""

    def module(self, cfg):
        raise NotImplementedError

    def init(self, key, cfg) -> dict:
        L = cfg.data.seq_len
        dummy = jnp.zeros((1, L), jnp.int32)
        return self.module(cfg).init(key, dummy, jnp.ones((1, L), bool))["params"]

    def apply(self, params, batch, cfg, capture: bool = False):
        module = self.module(cfg)
        if not capture:
            return module.apply({"params": params}, batch.inputs, batch.key_mask), {}
        logits, state = module.apply({"params": params}, batch.inputs, batch.key_mask,
                                     mutable=["intermediates"])
        return logits, {k: v[0] for k, v in state["intermediates"].items()}


def trainable_groups(variant: Variant, cfg) -> set[str]:
    """Groups the optimiser may move for cfg (possibly only from a scheduled step on)."""
    present = variant.present_groups(cfg)
    groups = present - variant.fixed_groups(cfg) - set(cfg.optim.freeze)
    return groups | ({g for g, _ in cfg.optim.unfreeze_at} & present)


def label_tree(variant: Variant, params: dict) -> dict:
    """params-shaped tree with each leaf replaced by its group name."""
    def label(path, _):
        keys = tuple(getattr(k, "key", getattr(k, "name", str(k))) for k in path)
        return variant.param_group(keys)
    return jax.tree_util.tree_map_with_path(label, params)
