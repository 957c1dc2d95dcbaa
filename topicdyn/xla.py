"""XLA compiler options shared by every compiled program of the package."""
from __future__ import annotations

import functools
import os

import jax


@functools.cache
def compile_options() -> dict:
    """Options for jax.jit(..., compiler_options=...).

    On CPU: XLA:CPU's classic loop emitters instead of its MLIR fusion emitters (an XLA debug
    option, xla_cpu_use_fusion_emitters). On the training chunk they halve the compile time, cut
    the compiler's peak memory by ~140 MB and run the step at least as fast (scripts/bench.py).
    Empty on other backends, where this XLA no longer knows the flag (checked once), and with
    the environment variable TOPICDYN_XLA_DEFAULTS=1 (the benchmark's comparison).
    """
    if jax.default_backend() != "cpu" or os.environ.get("TOPICDYN_XLA_DEFAULTS") == "1":
        return {}
    opts = {"xla_cpu_use_fusion_emitters": False}
    try:
        jax.jit(lambda x: x + 1, compiler_options=opts).lower(1.0).compile()
    except Exception:  # noqa: BLE001 - an unknown option: fall back to XLA's defaults
        return {}
    return opts
