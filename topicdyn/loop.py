"""The host training loop: one compiled program for a group of members, its member axis sharded
over devices. A single run (run.train) is a group of one point; a sweep group is several.

The members of a group (points x seeds, point-major) are one vmapped ensemble: seeds, learning
rates and init scales are per-member arrays (training.init_state / make_chunk_fn), so the group
compiles once. The member axis is padded to a multiple of the device count and sharded with
NamedSharding(Mesh(devices, "members"), P("members")); padded members copy member 0 and are
never written. Each point keeps the standard run directory:
    config.json        the full Config (+ which implementation trains it)
    metrics.jsonl      one row per logging point: step, loss (mean over the steps since the last
                       row), grad and param norms per group; every list has one entry per seed
    timing.jsonl       wall-clock throughput (kept apart so metrics are bit-reproducible)
    checkpoints/       orbax, plus checkpoints.jsonl with a content hash per checkpoint
Every checkpoint step is also a logging step, so a resumed point writes exactly the rows an
uninterrupted one would.

Multi-host (jax.distributed): every process runs the same program on its local devices; state
is gathered to every host at logging/checkpoint steps and only process 0 writes files.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from topicdyn.checkpoint import Checkpointer, checkpoint_steps
from topicdyn.config import Config
from topicdyn.training import TrainState, group_norms, init_state, make_chunk_fn

AXIS = "members"


class RunInterrupted(Exception):
    """Raised by a loop with stop_at=s after the checkpoint at step s (used to test resume)."""


def log_steps(cfg: Config) -> list[int]:
    """Steps after which a metrics row is written (includes every checkpoint step > 0)."""
    tc = cfg.train
    steps = set(range(tc.log_every, tc.steps + 1, tc.log_every)) | set(checkpoint_steps(tc))
    return sorted(s for s in steps if s > 0)


_NORMS: dict = {}


def param_norms(cfg: Config):
    """jit(vmap(params -> {group: norm})) for cfg's variant (cached per config)."""
    if cfg not in _NORMS:
        _NORMS[cfg] = jax.jit(jax.vmap(lambda p: group_norms(p, cfg)))
    return _NORMS[cfg]


# ---- devices ----------------------------------------------------------------------------------
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


class PointCheckpointer(Checkpointer):
    """Checkpointer whose orbax manager involves process 0 only (the only writer): orbax's
    default multi-process barriers would wait for processes that never save."""

    def __init__(self, run_dir):
        if jax.process_count() == 1:
            super().__init__(run_dir)
            return
        self.run_dir = Path(run_dir).absolute()
        self.index = self.run_dir / "checkpoints.jsonl"
        (self.run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)  # orbax: create=False
        opts = ocp.CheckpointManagerOptions(
            max_to_keep=None, create=False, enable_async_checkpointing=False,
            multiprocessing_options=ocp.options.MultiprocessingOptions(
                primary_host=0, active_processes={0}))
        self.manager = ocp.CheckpointManager(self.run_dir / "checkpoints", options=opts)


# ---- a group ----------------------------------------------------------------------------------
@dataclass
class Group:
    """Points trained by one program: their configs (equal up to what goes on the member axis)
    and run directories. Member j of point i is index i * n_seeds + j."""

    cfgs: list[Config]
    dirs: list[Path]

    @property
    def n_seeds(self) -> int:
        return self.cfgs[0].train.n_seeds

    def slices(self) -> list[slice]:
        n = self.n_seeds
        return [slice(i * n, (i + 1) * n) for i in range(len(self.cfgs))]

    def member_values(self):
        """(seeds, lrs, init_scales): (M,) arrays, point-major."""
        n = self.n_seeds
        seeds = np.concatenate([c.train.seed + np.arange(n) for c in self.cfgs])
        lrs = np.repeat([c.optim.lr for c in self.cfgs], n)
        inits = np.repeat([c.model.init_scale for c in self.cfgs], n)
        return seeds.astype(np.int32), lrs.astype(np.float32), inits.astype(np.float32)

    def program(self) -> tuple[Config, np.ndarray | None, np.ndarray | None, object]:
        """(config of the compiled program, per-member lr or None, per-member init or None,
        per-member MaskThresholds or None).

        A hyper-parameter shared by every point stays a compile-time constant (a group of one
        point compiles exactly its own config); one that differs goes on the member axis, with
        optim.lr = 1 so that the member's factor is its learning rate. Differing mask
        probabilities become per-member thresholds; the program's own cfg.mask is then the
        one needing the largest static kernel buffers (kernels.widest_mask)."""
        _, lrs, inits = self.member_values()
        cfg = self.cfgs[0]
        lr = inits_out = thr = None
        if len(set(lrs.tolist())) > 1:
            cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, lr=1.0))
            lr = lrs
        if len(set(inits.tolist())) > 1:
            inits_out = inits
        masks = [c.mask for c in self.cfgs]
        if len(set(masks)) > 1:
            from topicdyn.masking import mask_thresholds
            from topicdyn.models.kernels import widest_mask

            cfg = dataclasses.replace(cfg, mask=widest_mask(cfg, masks))
            thr = mask_thresholds(cfg.data, [m for m in masks for _ in range(self.n_seeds)])
        return cfg, lr, inits_out, thr


def write_config(cfg: Config, path: Path) -> None:
    """config.json: the Config plus the record of which implementation trains it."""
    from topicdyn.config import RECORD_KEY
    from topicdyn.models.kernels import record

    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({**cfg.to_dict(), RECORD_KEY: record(cfg)}, indent=2,
                              sort_keys=True) + "\n")
    tmp.replace(path)


def prepare_point(cfg: Config, run_dir: Path, start: int) -> None:
    """Make a point's directory resume at `start` (0: fresh): config.json written, files after
    `start` dropped (metrics, timing, probes, checkpoint index and orbax steps), verdicts
    removed (rewritten at the end). theory.json is kept."""
    run_dir.mkdir(parents=True, exist_ok=True)
    write_config(cfg, run_dir / "config.json")
    (run_dir / "verdicts.jsonl").unlink(missing_ok=True)
    files = ("metrics.jsonl", "timing.jsonl", "probes.jsonl", "checkpoints.jsonl")
    if start == 0:
        for f in files:
            (run_dir / f).unlink(missing_ok=True)
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        return
    for f in files:
        if (run_dir / f).exists():
            truncate_jsonl(run_dir / f, start)
    ck = PointCheckpointer(run_dir)
    try:
        for s in ck.steps():
            if s > start:
                ck.manager.delete(s)
    finally:
        ck.close()


def _pad(a: np.ndarray, m: int) -> np.ndarray:
    return np.concatenate([a, np.repeat(a[:1], m - len(a), axis=0)]) if m > len(a) else a


def train_group(group: Group, mesh: Mesh, start: int, hooks: Callable | None = None, *,
                progress: bool = True, stop_at: int | None = None) -> None:
    """Train a group's points from step `start` (their directories prepared for it).

    hooks(params0_host) -> [hook]: on_checkpoint hooks called as hook(step, host_state, None)
    on process 0 after every checkpoint (host_state holds every member, padding included); a
    hook's close() is called before returning, also on errors.
    stop_at: raise RunInterrupted after the checkpoint at that step (tests)."""
    cfg, lr, inits, thr = group.program()
    seeds, _, _ = group.member_values()
    M, n_dev = len(seeds), mesh.devices.size
    Mp = -(-M // n_dev) * n_dev
    seeds = _pad(seeds, Mp)
    state = init_state(cfg, jnp.asarray(seeds), None if inits is None else _pad(inits, Mp))
    host = jax.device_get(state)
    params0 = host.params
    writer = is_writer()
    slices = group.slices()
    ckpts = [PointCheckpointer(d) for d in group.dirs] if writer else []
    if start > 0:
        if writer:
            parts = [c.restore(start, jax.tree.map(lambda x, s=s: jnp.asarray(x[s]), host))
                     for c, s in zip(ckpts, slices)]
            parts.append(jax.tree.map(lambda x: x[M:], host))  # padding: the init values
            host = jax.tree.map(lambda *xs: np.concatenate([np.asarray(x) for x in xs]), *parts)
        host = broadcast(host)
    state = shard(TrainState(*host), mesh)
    seeds_d = shard(seeds, mesh)
    lr_d = None if lr is None else shard(_pad(lr, Mp), mesh)
    thr_d = None if thr is None else shard(jax.tree.map(lambda x: _pad(x, Mp), thr), mesh)
    active = hooks(params0) if (writer and hooks) else []

    chunk_fn = make_chunk_fn(cfg)
    ck_steps = set(checkpoint_steps(cfg.train))
    K, total = cfg.train.chunk, cfg.train.steps
    n_seeds = group.n_seeds
    tokens_per_step = cfg.data.batch_size * (cfg.data.N_min + cfg.data.N_max) / 2
    bar = _progress_bar(total, start, progress and writer)
    window: list[np.ndarray] = []
    step, t_last, s_last = start, time.perf_counter(), start
    try:
        if start == 0 and writer:
            for c, s in zip(ckpts, slices):
                c.save(0, jax.tree.map(lambda x, s=s: x[s], host))
            for h in active:
                h(0, host, None)
        for boundary in (b for b in log_steps(cfg) if b > start):
            while step < boundary:
                n = min(K, boundary - step)
                state, m = chunk_fn(state, seeds_d, np.int32(step), np.int32(n), lr_d, thr_d)
                m = to_host(m)
                window.append(np.asarray(m["loss"])[:n])
                last_grad = {g: np.asarray(v)[n - 1] for g, v in m["grad_norm"].items()}
                step += n
                bar.update(n)
            losses = np.concatenate(window)  # (steps in window, members)
            window = []
            pnorm = to_host(param_norms(cfg)(state.params))
            now = time.perf_counter()
            rate = (step - s_last) / max(now - t_last, 1e-9)
            t_last, s_last = now, step
            if writer:
                for d, s in zip(group.dirs, slices):
                    row = {"step": step, "loss": _floats(losses.mean(0)[s]),
                           "loss_last": _floats(losses[-1][s]),
                           "grad_norm": {g: _floats(v[s]) for g, v in last_grad.items()},
                           "param_norm": {g: _floats(np.asarray(v)[s]) for g, v in pnorm.items()}}
                    append_jsonl(d / "metrics.jsonl", row)
                    append_jsonl(d / "timing.jsonl", {
                        "step": step, "steps_per_s": rate, "group_members": M,
                        "tokens_per_s": rate * tokens_per_step * n_seeds})
            bar.set_postfix(loss=f"{float(losses[-1][:M].mean()):.4f}", steps_s=f"{rate:.0f}")
            if step in ck_steps:
                host = to_host(state)
                if writer:
                    for c, s in zip(ckpts, slices):
                        c.save(step, jax.tree.map(lambda x, s=s: x[s], host))
                    for h in active:
                        h(step, host, None)
                barrier("checkpoint")
                if stop_at is not None and stop_at <= step < total:
                    raise RunInterrupted(f"stopped at step {step}")
    finally:
        bar.close()
        for c in ckpts:
            c.close()
        for h in active:
            close = getattr(h, "close", None)
            if close is not None:  # e.g. a background prober: wait for its last rows
                close()


# ---- files ------------------------------------------------------------------------------------
def truncate_jsonl(path: Path, last_step: int) -> None:
    """Keep the rows up to last_step (a line cut by an interruption is dropped)."""
    keep = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row["step"] <= last_step:
            keep.append(json.dumps(row) + "\n")
    path.write_text("".join(keep))


def append_jsonl(path: Path, row: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")


def _floats(a) -> list[float]:
    return [float(x) for x in np.atleast_1d(np.asarray(a, dtype=np.float64))]


class _NoBar:
    def update(self, n):
        pass

    def set_postfix(self, **kw):
        pass

    def close(self):
        pass


def _progress_bar(total: int, start: int, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm
    return tqdm(total=total, initial=start, unit="step", file=sys.stderr, dynamic_ncols=True)
