"""The paper's regimes as named presets on the reference defaults."""
from __future__ import annotations

from typing import Any

from topicdyn.config.checks import ConfigError
from topicdyn.config.parse import apply_overrides
from topicdyn.config.sections import Config

# ---- the paper's regimes (BRIEF §3) ---------------------------------------------------------
PRESETS: dict[str, dict[str, Any]] = {
    # E: train the embedding; uniform attention, W^V = I, decoder = I.
    "E": {"model.embedding": "trained", "model.attention": "uniform",
          "model.value": "identity", "model.decoder": "identity"},
    # V (stage 1): train W^V; one-hot embedding, uniform attention, decoder = I.
    "V": {"model.embedding": "onehot", "model.attention": "uniform",
          "model.value": "trained", "model.decoder": "identity"},
    # A (stage 2): train W^K, W^Q; one-hot embedding, W^V = topic block, decoder = I.
    "A": {"model.embedding": "onehot", "model.attention": "trained",
          "model.value": "topic_block", "model.decoder": "identity"},
    # F: train everything from a small init.
    "F": {"model.embedding": "trained", "model.attention": "trained",
          "model.value": "trained", "model.decoder": "trained", "model.init_scale": 0.02},
}


def preset(name: str, overrides: list[str] | dict | None = None) -> Config:
    """The named regime on the reference defaults, plus optional dotted overrides."""
    if name not in PRESETS:
        raise ConfigError(f"preset: must be one of {', '.join(PRESETS)}, got {name!r}")
    d = dict(PRESETS[name])
    d["preset"] = name
    cfg = apply_overrides(Config(), d)
    return apply_overrides(cfg, overrides) if overrides else cfg
