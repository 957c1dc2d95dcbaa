"""Shared helpers: one jitted sampler (compiled once per config) and the default batch."""
from __future__ import annotations

import os

import jax
import pytest

# topicdyn's disk caches (theory results, compiled programs) are off in tests
# (tests/test_theory_cache.py turns the theory's on in a temporary directory): a test must compute
# what it checks, and must not write to the user's cache
os.environ["TOPICDYN_CACHE"] = "0"

from topicdyn.config import DataConfig
from topicdyn.data import sample_documents

# cfg and batch are static: one compilation per (config, batch size), reused across tests
sample_docs_jit = jax.jit(sample_documents, static_argnums=(1, 2))

BIG_BATCH = 4000


@pytest.fixture(scope="session")
def default_data_cfg() -> DataConfig:
    return DataConfig()


@pytest.fixture(scope="session")
def default_docs(default_data_cfg):
    """4000 documents from the reference defaults (T=10, v=10, alpha=0.1, N in [100, 150])."""
    return jax.device_get(sample_docs_jit(jax.random.PRNGKey(0), default_data_cfg, BIG_BATCH))
