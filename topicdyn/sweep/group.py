"""One compiled program for a group of sweep points, its member axis sharded over devices.

The members of a group (points x seeds, point-major) are one vmapped ensemble: seeds, learning
rates and init scales are per-member arrays (training.init_state / make_chunk_fn), so the group
compiles once. The member axis is padded to a multiple of the device count and sharded with
NamedSharding(Mesh(devices, "members"), P("members")); padded members copy member 0 and are
never written. Each point keeps the standard run directory (config.json, metrics.jsonl,
timing.jsonl, checkpoints/, probes.jsonl): the loop mirrors run.train and writes every point's
slice of the ensemble, so `topicdyn info/plot/report/train --resume` work on a point.

Multi-host (jax.distributed): every process runs the same program on its local devices; state
is gathered to every host at logging/checkpoint steps and only process 0 writes files.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from topicdyn.checkpoint import Checkpointer, checkpoint_steps
from topicdyn.config import Config
from topicdyn.probes.runner import CheckpointProber
from topicdyn.run import (RunInterrupted, _floats, _progress_bar, log_steps, param_norms,
                          write_config)
from topicdyn.training import N_EVAL, TrainState, init_state, make_chunk_fn

AXIS = "members"


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
    """Points trained by one program. Member j of point i is index i * n_seeds + j."""

    points: list  # spec.Point
    dirs: list[Path]

    @property
    def n_seeds(self) -> int:
        return self.points[0].cfg.train.n_seeds

    def slices(self) -> list[slice]:
        n = self.n_seeds
        return [slice(i * n, (i + 1) * n) for i in range(len(self.points))]

    def member_values(self):
        """(seeds, lrs, init_scales): (M,) arrays, point-major."""
        n = self.n_seeds
        seeds = np.concatenate([p.cfg.train.seed + np.arange(n) for p in self.points])
        lrs = np.repeat([p.cfg.optim.lr for p in self.points], n)
        inits = np.repeat([p.cfg.model.init_scale for p in self.points], n)
        return seeds.astype(np.int32), lrs.astype(np.float32), inits.astype(np.float32)

    def program(self) -> tuple[Config, np.ndarray | None, np.ndarray | None, object]:
        """(config of the compiled program, per-member lr or None, per-member init or None,
        per-member MaskThresholds or None).

        A hyper-parameter shared by every point stays a compile-time constant (exactly
        run.train's program); one that differs goes on the member axis, with optim.lr = 1 so
        that the member's factor is its learning rate. Differing mask probabilities become
        per-member thresholds; the program's own cfg.mask is then the point's whose masked
        positions need the largest static buffers (models/fast.default_cap)."""
        _, lrs, inits = self.member_values()
        cfg = self.points[0].cfg
        lr = inits_out = thr = None
        if len(set(lrs.tolist())) > 1:
            cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, lr=1.0))
            lr = lrs
        if len(set(inits.tolist())) > 1:
            inits_out = inits
        masks = [p.cfg.mask for p in self.points]
        if len(set(masks)) > 1:
            from topicdyn.masking import mask_thresholds
            from topicdyn.models.fast import CAP_SIGMAS, default_cap
            from topicdyn.models.lean import LEAN_CAP_SIGMAS

            d = cfg.data

            def caps(m):
                c = dataclasses.replace(cfg, mask=m)
                return tuple(default_cap(c, d.batch_size, d.seq_len, k)
                             for k in (LEAN_CAP_SIGMAS, CAP_SIGMAS))

            cfg = dataclasses.replace(cfg, mask=max(masks, key=caps))
            thr = mask_thresholds(d, [m for m in masks for _ in range(self.n_seeds)])
        return cfg, lr, inits_out, thr


def _pad(a: np.ndarray, m: int) -> np.ndarray:
    return np.concatenate([a, np.repeat(a[:1], m - len(a), axis=0)]) if m > len(a) else a


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
            _truncate(run_dir / f, start)
    ck = PointCheckpointer(run_dir)
    try:
        for s in ck.steps():
            if s > start:
                ck.manager.delete(s)
    finally:
        ck.close()


class GroupProber(CheckpointProber):
    """Probes a subset of a group's members (one train.seed: one evaluation set) in one vmapped
    call and appends each point's slice to that point's probes.jsonl.

    members: indices into the group's member axis; views: [(run_dir, lo, hi)], a point's
    members being members[lo:hi]; params0: the subset's parameters at step 0 (host arrays)."""

    def __init__(self, cfg: Config, members, views, params0, n_eval: int = N_EVAL):
        self.members, self.views, self._p0 = np.asarray(members), views, params0
        super().__init__(cfg, views[0][0], n_eval=n_eval, background=True)

    def _probe(self, step, params, run_dir):
        t = time.perf_counter()
        sub = jax.tree.map(lambda x: np.asarray(x)[self.members], params)
        out = jax.device_get(self.fn(sub, self._p0))
        for d, lo, hi in self.views:
            row = {"step": int(step)}
            row.update({k: [float(x) for x in np.atleast_1d(v)[lo:hi]]
                        for k, v in sorted(out.items())})
            with (Path(d) / "probes.jsonl").open("a") as f:
                f.write(json.dumps(row) + "\n")
        self.seconds += time.perf_counter() - t


def train_group(group: Group, mesh: Mesh, start: int, make_probers=None, *,
                progress: bool = True, stop_at: int | None = None) -> None:
    """Train a group's points from step `start` (their directories prepared for it).

    make_probers(params0_host) -> [hooks]: on_checkpoint hooks called as hook(step, host_state,
    None) on process 0 after every checkpoint (host_state has every member, padding included).
    stop_at: raise run.RunInterrupted after the checkpoint at that step (tests)."""
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
    hooks = make_probers(params0) if (writer and make_probers) else []

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
            for h in hooks:
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
                    _append(d / "metrics.jsonl", row)
                    _append(d / "timing.jsonl", {
                        "step": step, "steps_per_s": rate, "group_members": M,
                        "tokens_per_s": rate * tokens_per_step * n_seeds})
            bar.set_postfix(loss=f"{float(losses[-1][:M].mean()):.4f}", steps_s=f"{rate:.0f}")
            if step in ck_steps:
                host = to_host(state)
                if writer:
                    for c, s in zip(ckpts, slices):
                        c.save(step, jax.tree.map(lambda x, s=s: x[s], host))
                    for h in hooks:
                        h(step, host, None)
                barrier("checkpoint")
                if stop_at is not None and stop_at <= step < total:
                    raise RunInterrupted(f"stopped at step {step}")
    finally:
        bar.close()
        for c in ckpts:
            c.close()
        for h in hooks:
            h.close()


def _truncate(path: Path, last_step: int) -> None:
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


def _append(path: Path, row: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")
