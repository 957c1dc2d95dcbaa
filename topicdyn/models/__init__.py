"""Model registry. Every variant follows one protocol:

    init(key, cfg) -> params                      (a nested dict of arrays)
    apply(params, batch, cfg, capture=False) -> (logits (B, L, n_vocab), intermediates dict)

`intermediates` holds the named activations (embeddings, scores, attention, values, context,
logits) when capture=True, so probes never re-implement the forward pass. Add a variant with
`@register("name")` on a `ModelDef` factory.
"""
from __future__ import annotations

from typing import Callable, NamedTuple


class ModelDef(NamedTuple):
    init: Callable  # (key, cfg) -> params
    apply: Callable  # (params, batch, cfg, capture=False) -> (logits, intermediates)


MODELS: dict[str, ModelDef] = {}


def register(name: str):
    def deco(factory: Callable[[], ModelDef]):
        MODELS[name] = factory()
        return factory
    return deco


def get_model(name: str) -> ModelDef:
    return MODELS[name]


from topicdyn.models import transformer as _transformer  # noqa: E402,F401  (registers models)
