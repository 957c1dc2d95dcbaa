"""Devices of the host training loop: the member mesh and its sharding, gathering to the host,
multi-host broadcast and barriers, and the Stepper that drives the sampler and training programs
over them (a spare device samples the next block while the others train)."""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from topicdyn.config import Config
from topicdyn.training import programs, steps_per_dispatch

AXIS = "members"


def member_mesh(devices=None) -> Mesh:
    """1-D mesh over every device of every process (jax.devices() is global)."""
    return Mesh(np.asarray(devices if devices is not None else jax.devices()), (AXIS,))


def is_writer() -> bool:
    return jax.process_index() == 0


def shard(tree, mesh: Mesh):
    """Host arrays with a leading member axis -> global arrays sharded along it."""
    sh = NamedSharding(mesh, PartitionSpec(AXIS))
    if jax.process_count() == 1:
        return jax.device_put(tree, sh)
    return jax.tree.map(lambda x: jax.make_array_from_callback(
        np.shape(x), sh, lambda idx, x=np.asarray(x): x[idx]), tree)


def to_host(tree):
    """Global (possibly multi-host) arrays -> numpy on every process."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils
    return multihost_utils.process_allgather(tree, tiled=True)


def broadcast(tree):
    """Process 0's host values on every process (no-op on one process)."""
    if jax.process_count() == 1:
        return tree
    from jax.experimental import multihost_utils
    return multihost_utils.broadcast_one_to_all(tree)


_BARRIERS = [0]


def barrier(name: str, timeout_s: int = 7 * 24 * 3600) -> None:
    """Every process waits here, e.g. while process 0 alone writes files or computes theory.
    The coordination service's barrier takes a timeout; a collective (sync_global_devices)
    may give up after 30 s (gloo on CPU)."""
    if jax.process_count() == 1:
        return
    _BARRIERS[0] += 1
    key = f"topicdyn-{name}-{_BARRIERS[0]}"
    try:
        from jax._src import distributed
        distributed.global_state.client.wait_at_barrier(key, timeout_in_ms=timeout_s * 1000)
    except (ImportError, AttributeError):  # a JAX without that internal API
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(key)


def training_devices(mesh: Mesh, members: int) -> tuple[Mesh, object | None]:
    """(mesh to train `members` members on, spare device to sample on or None).

    Members are spread over at most `members` devices (a device with only padding would waste
    itself); on one process, a device left over samples the next block of batches while the
    others train (on a CPU with host devices, a second core: the sampler is about half of a
    small model's step)."""
    devs = list(mesh.devices.flat)
    if jax.process_count() > 1 or len(devs) <= members:
        return mesh, None
    return member_mesh(devs[:members]), devs[members]


def _per_device(fn, mesh: Mesh, in_specs: tuple, out_specs, donate=()):
    """fn run by each device on its own members (shard_map), not partitioned by XLA.

    Vmapped over members, a while loop (the sampler's gamma rejection draws, loops inside a
    model's backward pass) runs until every member's has ended, which over a sharded member
    axis is a cross-device all-reduce per iteration; on host CPU devices one delayed
    participant (a probe program on the same device) stalls every device, and past XLA's
    rendezvous timeout the process aborts. Per device the loops are local, and each member's
    values are the same (a member's computation does not read another member's)."""
    f = jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)
    return jax.jit(f, donate_argnums=donate)


def _sharded_programs(sample_fn, train_fn, mesh: Mesh, spare, with_thr: bool, with_lr: bool):
    """The sampler and training programs per device over a member mesh of several devices."""
    M, B, R = PartitionSpec(AXIS), PartitionSpec(None, AXIS), PartitionSpec()
    sample = sample_fn
    if spare is None:  # the sampler on the mesh (else alone on the spare device)
        if with_thr:
            sample = _per_device(sample_fn, mesh, (M, R, M), B)
        else:
            one = _per_device(lambda s, t: sample_fn(s, t), mesh, (M, R), B)
            sample = lambda s, t, _thr=None: one(s, t)  # noqa: E731
    if with_lr:
        train = _per_device(train_fn, mesh, (M, B, R, M), (M, B), donate=(0,))
    else:
        one_t = _per_device(lambda st, b, n: train_fn(st, b, n), mesh, (M, B, R), (M, B),
                            donate=(0,))
        train = lambda st, b, n, _lr=None: one_t(st, b, n)  # noqa: E731
    return sample, train


class Stepper:
    """Training steps of a group's members in blocks: the sampler program draws a block of
    batches (steps_per_dispatch steps), the training program runs up to that many steps on
    it, and the next block is dispatched before the current one trains, so that on a spare
    device (training_devices) it is sampled while the current block trains.

    seeds (Mp,) and thr_p (per-member MaskThresholds or None) are host arrays, padded to the
    mesh; lr_d the per-member learning rates already sharded (or None). total: the step the
    stepping ends at (default cfg.train.steps): no block is sampled ahead past it."""

    def __init__(self, cfg: Config, mesh: Mesh, spare, seeds, lr_d, thr_p,
                 total: int | None = None):
        self.block = steps_per_dispatch(cfg, len(seeds) // mesh.devices.size)
        self.sample_fn, self.train_fn = programs(cfg, self.block)
        if mesh.devices.size > 1:
            self.sample_fn, self.train_fn = _sharded_programs(
                self.sample_fn, self.train_fn, mesh, spare, thr_p is not None, lr_d is not None)
        self.total = cfg.train.steps if total is None else int(total)
        self.spare, self.lr_d = spare, lr_d
        if spare is None:  # each device samples its own members' batches
            self.seeds = shard(seeds, mesh)
            self.thr = None if thr_p is None else shard(thr_p, mesh)
        else:
            self.seeds = jax.device_put(seeds, spare)
            self.thr = None if thr_p is None else jax.device_put(thr_p, spare)
        self.batch_sharding = NamedSharding(mesh, PartitionSpec(None, AXIS))
        self.pending: tuple[int, object] | None = None  # (first step, batches) sampled ahead

    def _sample(self, t: int):
        b = self.sample_fn(self.seeds, np.int32(t), self.thr)
        return b if self.spare is None else jax.device_put(b, self.batch_sharding)

    def advance(self, state, step: int, n: int):
        """(state, metrics (block, Mp)) after steps step..step+n-1 (n <= block; rows >= n
        zero). Dispatches the sampling of the block after them before training this one."""
        if self.pending is not None and self.pending[0] == step:
            batches = self.pending[1]
        else:
            batches = self._sample(step)
        nxt = step + n
        self.pending = (nxt, self._sample(nxt)) if nxt < self.total else None
        return self.train_fn(state, batches, np.int32(n), self.lr_d)
