"""XLA compiler options shared by every compiled program of the package."""
from __future__ import annotations

import functools


@functools.cache
def compile_options() -> dict:
    """Options for jax.jit(..., compiler_options=...): XLA's defaults.

    Until issue 16 topicdyn chose XLA:CPU's classic loop emitters over its fusion emitters for
    their lower compile time and memory. Measured on the host loop's programs (scripts/bench.py,
    2-core CPU), the fusion emitters train preset V's step 1.8x faster (85 vs 150 us) and preset
    F's as fast, for ~50-100 MB more peak memory (well under the reference's 600 MB) and
    1-2 s more compile time; speed matters more, so the defaults stand. Tests that compile many
    small programs pass their own options (faster to compile, the same float32 arithmetic).
    """
    return {}


def device_array(x, dtype=None):
    """A host value as a device array (the default device), converted on the host: jnp.asarray
    converts on the device with a jitted program per shape and dtype, which a probe setup of
    ~50 constants paid on every run (~0.3 s of compiling or cache lookups)."""
    import jax
    import numpy as np

    return jax.device_put(np.asarray(x) if dtype is None else np.asarray(x, dtype))
