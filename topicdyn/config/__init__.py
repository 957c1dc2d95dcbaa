"""Frozen, validated configuration objects and the named paper presets.

sections (the dataclasses), parse (JSON, overrides, run directories), presets, checks.

A `Config` is five small frozen dataclasses (data, mask, model, optim, train). Every field is
checked at construction; a bad value raises `ConfigError` naming the field and the allowed values,
which the CLI turns into a one-line message and exit code 2.
"""
from topicdyn.config.checks import ConfigError
from topicdyn.config.parse import RECORD_KEY, apply_overrides, load_config, require_run
from topicdyn.config.presets import PRESETS, preset
from topicdyn.config.sections import (N_SPECIALS, PARAM_GROUPS, Config, DataConfig, MaskConfig,
                                      ModelConfig, OptimConfig, TrainConfig)

__all__ = ["N_SPECIALS", "PARAM_GROUPS", "PRESETS", "RECORD_KEY", "Config", "ConfigError",
           "DataConfig", "MaskConfig", "ModelConfig", "OptimConfig", "TrainConfig",
           "apply_overrides", "load_config", "preset", "require_run"]
