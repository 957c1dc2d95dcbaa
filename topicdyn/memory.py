"""Refusing a config that cannot fit, before anything is allocated or compiled."""
from __future__ import annotations

import jax

from topicdyn.config import Config


def estimate_peak_bytes(cfg: Config, members: int) -> int:
    """A generous estimate of the peak memory of training `members` members of cfg (bytes).

    Per member: the parameters with their Adam moments and gradients, the activations the
    backward pass keeps (attention scores per head and layer, hidden states, logits; for the
    bag-of-words kernels the vocabulary tables and a vocabulary row per selected position), the batches sampled ahead;
    plus a fixed allowance for the runtime. It exists to refuse a config that cannot fit before
    anything is allocated, not to predict the peak closely."""
    from topicdyn.models.kernels import select
    from topicdyn.training import steps_per_dispatch

    d, m = cfg.data, cfg.model
    B, L, V, w = d.batch_size, d.seq_len, d.n_vocab, cfg.d_model
    nl, H = m.n_layers, m.n_heads
    params = V * w * 2 + 4 * w * w * nl + L * w
    if select(cfg) == "generic":
        act = B * L * (2 * H * L * nl + 10 * w * nl + 3 * V)
    else:  # vocabulary tables (nv x nv per head) and one nv-row per selected position
        from topicdyn.models.fast import default_cap
        rows = B + default_cap(cfg, B, L)
        act = 10 * H * (V * V + rows * V) + 8 * B * L
    per_member = 4 * (4 * params + 2 * act)
    # the batches of one block, and of the next one being sampled ahead
    sampled = 2 * 10 * B * L * members * steps_per_dispatch(cfg, members)
    return int(members * per_member + sampled + 400 * 2**20)


def available_bytes() -> int | None:
    """Memory of the first device (accelerator limit, or the host's physical memory on CPU)."""
    try:
        stats = jax.devices()[0].memory_stats() or {}
    except Exception:  # noqa: BLE001 - not every backend reports
        stats = {}
    if stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    try:
        import os
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(cfg: Config, members: int, devices: int = 1) -> None:
    """ConfigError (one line, before compiling) if the estimate exceeds 90% of the memory of
    the devices the members are spread over."""
    from topicdyn.config import ConfigError

    need, have = estimate_peak_bytes(cfg, -(-members // devices)), available_bytes()
    if have is not None and need > 0.9 * have:
        gib = 2**30
        raise ConfigError(
            f"train.n_seeds: {members} members of batch {cfg.data.batch_size} x length "
            f"{cfg.data.seq_len} need an estimated {need / gib:.1f} GiB per device, more than "
            f"this machine's {have / gib:.1f} GiB; lower train.n_seeds or data.batch_size, or "
            "split the sweep (spec max_members)")
