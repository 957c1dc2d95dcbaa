"""topicdyn: training dynamics of tiny transformers on synthetic topic-model data."""

from topicdyn.config import Config, ConfigError, apply_overrides, load_config, preset

__all__ = ["Config", "ConfigError", "apply_overrides", "load_config", "preset"]
__version__ = "0.1.0"
