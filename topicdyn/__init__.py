"""topicdyn: training dynamics of tiny transformers on synthetic topic-model data.

The public API (docs/tutorial.ipynb walks through it):

    cfg = topicdyn.preset("F", ["train.steps=300"])     # a validated, frozen Config
    run_dir = topicdyn.train(cfg, "runs/f300", probes=True)
    run = topicdyn.load_run(run_dir)                    # tidy DataFrames: metrics, probes, ...
    params, cfg = topicdyn.load_params(run_dir, step=100)  # leaves: leading seed axis
    batch = topicdyn.eval_batch(cfg)                    # the probes' fixed evaluation documents
    logits, acts = topicdyn.get_model(cfg.model.name).apply(p, batch, cfg, capture=True)

Config and its helpers: Config, ConfigError, preset, apply_overrides, load_config,
describe_config. Runs: train, load_params, list_checkpoints, load_run, load_sweep, export.
Data and models: sample_batch, eval_batch, get_model. Figures and reports: plot_run,
write_report, compare. Everything but the config is imported on first use (importing
topicdyn does not import JAX).
"""

from topicdyn.config import Config, ConfigError, apply_overrides, load_config, preset

__version__ = "0.1.0"

# name -> (module, attribute), imported on first access (PEP 562)
_LAZY = {
    "train": ("topicdyn.run", "train"),
    "load_params": ("topicdyn.checkpoint", "load_params"),
    "list_checkpoints": ("topicdyn.checkpoint", "list_checkpoints"),
    "load_run": ("topicdyn.frames", "load_run"),
    "load_sweep": ("topicdyn.frames", "load_sweep"),
    "export": ("topicdyn.frames", "export"),
    "Run": ("topicdyn.frames", "Run"),
    "Sweep": ("topicdyn.frames", "Sweep"),
    "sample_batch": ("topicdyn.masking", "sample_batch"),
    "eval_batch": ("topicdyn.probes", "eval_batch"),
    "get_model": ("topicdyn.models", "get_model"),
    "plot_run": ("topicdyn.plots", "plot_run"),
    "write_report": ("topicdyn.report", "write_report"),
    "compare": ("topicdyn.compare", "compare"),
    "describe_config": ("topicdyn.config.describe", "describe"),
}

__all__ = ["Config", "ConfigError", "apply_overrides", "load_config", "preset", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'topicdyn' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
