"""The host training loop: one compiled program for a group of members, its member axis sharded
over devices. A single run (run.train) is a group of one point; a sweep group is several.

The members of a group (points x seeds, point-major) are one vmapped ensemble: seeds, learning
rates and init scales are per-member arrays (training.init_state, make_sampler, make_train_fn),
so the group compiles once. The member axis is padded to a multiple of the device count and sharded with
NamedSharding(Mesh(devices, "members"), P("members")); padded members copy member 0 and are
never written. Each point keeps the standard run directory:
    config.json        the full Config (+ which implementation trains it)
    metrics.jsonl      one row per logging point (every multiple of train.log_every and every
                       checkpoint step): step, loss, loss_window, loss_last, grad and param norms
                       per group; every list has one entry per seed
    timing.jsonl       wall-clock throughput (kept apart so metrics are bit-reproducible)
    checkpoints/       orbax, plus checkpoints.jsonl with a content hash per checkpoint

The loss of a row at step s is the mean per-step training loss over the window (g, s],
g = log_every * floor((s - 1) / log_every): the last log_every steps at a multiple of
log_every, the steps since the last multiple at a checkpoint in between (`loss_window` steps).
The window never depends on train.steps or the checkpoint schedule, so two runs of the same
seed log the same loss at a step whatever their lengths. A resume from a checkpoint between
two multiples first replays, without writing, from the latest checkpoint at or before the
window's start, to recompute the window's losses; the rows are then those of an
uninterrupted run.

Multi-host (jax.distributed): every process runs the same program on its local devices; state
is gathered to every host at logging/checkpoint steps and only process 0 writes files.
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from topicdyn.checkpoint import BackgroundSaver, checkpoint_steps
from topicdyn.config import Config
from topicdyn.devices import (AXIS, Stepper, barrier, broadcast, is_writer,  # noqa: F401
                              member_mesh, shard, to_host, training_devices)
from topicdyn.faults import crash_point
from topicdyn.jsonl import append_jsonl
from topicdyn.progress import Progress, probe_counts
from topicdyn.rundir import PointCheckpointer
from topicdyn.training import TrainState, group_norms, init_state


class RunInterrupted(Exception):
    """Raised by a loop with stop_at=s after the checkpoint at step s (used to test resume)."""


class Diverged(Exception):
    """Non-finite loss or parameters at a logging point; the run stopped before saving them.
    The message is one line; each point's diverged.json names the last good checkpoint."""


def log_steps(cfg: Config) -> list[int]:
    """Steps after which a metrics row is written (includes every checkpoint step > 0)."""
    tc = cfg.train
    steps = set(range(tc.log_every, tc.steps + 1, tc.log_every)) | set(checkpoint_steps(tc))
    return sorted(s for s in steps if s > 0)


def window_start(step: int, log_every: int) -> int:
    """g: the loss of the row at `step` averages the per-step losses of steps g+1..step (the
    last multiple of log_every before step)."""
    return log_every * ((step - 1) // log_every)


def replay_candidates(cfg: Config, start: int) -> list[int]:
    """Checkpoint steps a resume at `start` may continue from, best first: `start` itself when
    the next row's window begins there; otherwise the checkpoints at or before the window's
    start (the latest first), from which the window's losses are recomputed."""
    every = cfg.train.log_every
    if start % every == 0:
        return [start]
    g = window_start(start + 1, every)  # where the next row's window begins
    return sorted((c for c in checkpoint_steps(cfg.train) if c <= g), reverse=True)


_NORMS: dict = {}


def param_norms(cfg: Config):
    """jit(vmap(params -> {group: norm})) for cfg's variant (cached per config)."""
    if cfg not in _NORMS:
        _NORMS[cfg] = jax.jit(jax.vmap(lambda p: group_norms(p, cfg)))
    return _NORMS[cfg]


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


def _pad(a: np.ndarray, m: int) -> np.ndarray:
    return np.concatenate([a, np.repeat(a[:1], m - len(a), axis=0)]) if m > len(a) else a


def train_group(group: Group, mesh: Mesh, start: int, hooks: Callable | None = None, *,
                progress: bool = True, stop_at: int | None = None,
                sinks: list | None = None) -> None:
    """Train a group's points from step `start` (their directories prepared for it).

    hooks(params0_host) -> [hook]: on_checkpoint hooks called as hook(step, host_state, None)
    on process 0 after every checkpoint (host_state holds every member, padding included); a
    hook's close() is called before returning, also on errors.
    sinks: [sink] with sink.row(run_dir, row) called after each metrics row is written and
    sink.close() at the end (experiment trackers, topicdyn.trackers).
    stop_at: raise RunInterrupted after the checkpoint at that step (tests)."""
    cfg, lr, inits, thr = group.program()
    seeds, _, _ = group.member_values()
    M = len(seeds)  # callers ran memory.check_memory beforehand
    mesh, spare = training_devices(mesh, M)
    n_dev = mesh.devices.size
    Mp = -(-M // n_dev) * n_dev
    seeds = _pad(seeds, Mp)
    state = init_state(cfg, jnp.asarray(seeds), None if inits is None else _pad(inits, Mp))
    host = jax.device_get(state)
    params0 = host.params
    writer = is_writer()
    slices = group.slices()
    ckpts = [PointCheckpointer(d) for d in group.dirs] if writer else []
    saver = BackgroundSaver() if writer else None
    origin = 0
    if start > 0:
        if writer:
            origin, host = _restore(group, ckpts, host, replay_candidates(cfg, start), M)
        origin = int(broadcast(np.int64(origin)))
        host = broadcast(host)
    state = shard(TrainState(*host), mesh)
    lr_d = None if lr is None else shard(_pad(lr, Mp), mesh)
    thr_p = None if thr is None else jax.tree.map(lambda x: _pad(x, Mp), thr)
    stepper = Stepper(cfg, mesh, spare, seeds, lr_d, thr_p)
    active = hooks(params0) if (writer and hooks) else []
    sinks = list(sinks or []) if writer else []
    ck_steps = set(checkpoint_steps(cfg.train))
    total, every = cfg.train.steps, cfg.train.log_every
    n_seeds = group.n_seeds
    tokens_per_step = cfg.data.batch_size * (cfg.data.N_min + cfg.data.N_max) / 2
    bar = Progress(total, progress and writer)
    bar.phase("compile: the training program (the first chunk)" + (
        f"; then replay steps {origin}..{start} to recompute the loss window" if origin < start
        else ""))
    window: list[np.ndarray] = []  # per-step losses since the last multiple of log_every
    step, t_last, s_last = origin, time.perf_counter(), start
    last_ck = start
    try:
        if start == 0 and writer:
            for c, s in zip(ckpts, slices):
                saver.save(c, 0, jax.tree.map(lambda x, s=s: x[s], host))
            for h in active:
                h(0, host, None)
        for boundary in (b for b in log_steps(cfg) if b > origin):
            while step < boundary:
                n = min(stepper.block, boundary - step)
                state, m = stepper.advance(state, step, n)
                m = to_host(m)
                window.append(np.asarray(m["loss"])[:n])
                last_grad = {g: np.asarray(v)[n - 1] for g, v in m["grad_norm"].items()}
                step += n
                if bar.started:
                    bar.update(n)
                elif step >= start:  # compiled (and replayed): the bar's rate starts here
                    bar.start(step)
            losses = np.concatenate(window)  # (steps in the row's window, members)
            if step % every == 0:
                window = []
            if step <= start:  # replayed: its rows and checkpoints are on disk already
                t_last = time.perf_counter()
                continue
            pnorm = to_host(param_norms(cfg)(state.params))
            _guard(group, step, losses, pnorm, M, last_ck, saver)
            now = time.perf_counter()
            rate = (step - s_last) / max(now - t_last, 1e-9)
            t_last, s_last = now, step
            if writer:
                for d, s in zip(group.dirs, slices):
                    row = {"step": step, "loss": _floats(losses.mean(0)[s]),
                           "loss_window": int(losses.shape[0]),
                           "loss_last": _floats(losses[-1][s]),
                           "grad_norm": {g: _floats(v[s]) for g, v in last_grad.items()},
                           "param_norm": {g: _floats(np.asarray(v)[s]) for g, v in pnorm.items()}}
                    append_jsonl(d / "metrics.jsonl", row)
                    crash_point("metrics.written", step)
                    append_jsonl(d / "timing.jsonl", {
                        "step": step, "steps_per_s": rate, "group_members": M,
                        "tokens_per_s": rate * tokens_per_step * n_seeds})
                    for sink in sinks:
                        sink.row(d, row)
            bar.show(float(losses[:, :M].mean()), probe_counts(active))  # the row's loss
            if step in ck_steps:
                host = to_host(state)
                if writer:
                    for c, s in zip(ckpts, slices):
                        saver.save(c, step, jax.tree.map(lambda x, s=s: x[s], host))
                    for h in active:
                        h(step, host, None)
                last_ck = step
                barrier("checkpoint")
                if stop_at is not None and stop_at <= step < total:
                    if saver is not None:
                        saver.flush()
                    raise RunInterrupted(f"stopped at step {step}")
        if saver is not None:
            saver.flush()
        bar.wait_for_probes(active)
    finally:
        if saver is not None:  # its checkpoints written before the managers close
            saver.close(raise_errors=False)
        bar.close()
        for c in ckpts:
            c.close()
        for h in active:
            close = getattr(h, "close", None)
            if close is not None:  # e.g. a background prober: wait for its last rows
                close()
        for sink in sinks:
            sink.close()


def _restore(group: Group, ckpts: list, host, candidates: list[int], M: int):
    """(step, host state) of the first candidate checkpoint every point has intact (its files
    and content hash checked), members in group order; step 0 is the initial state itself.
    Padding members keep their initial values."""
    from topicdyn.checkpoint import CheckpointError, list_checkpoints, params_hash, restore_checked

    slices = group.slices()
    for step in candidates:
        if step == 0:
            return 0, host
        try:
            parts = []
            for c, s, d in zip(ckpts, slices, group.dirs):
                got = restore_checked(c, step, jax.tree.map(lambda x, s=s: jnp.asarray(x[s]),
                                                            host), d)
                want = {r["step"]: r["sha256"] for r in list_checkpoints(d)}.get(step)
                if want is not None and want != params_hash(jax.device_get(got.params)):
                    raise CheckpointError(f"checkpoint {step} of {d}: content hash mismatch")
                parts.append(got)
        except CheckpointError as e:
            print(f"warning: {e}; replaying from the checkpoint before it", file=sys.stderr,
                  flush=True)
            continue
        parts.append(jax.tree.map(lambda x: x[M:], host))  # padding: the init values
        return step, jax.tree.map(lambda *xs: np.concatenate([np.asarray(x) for x in xs]),
                                  *parts)
    raise CheckpointError(f"resume: no intact checkpoint to continue from in {group.dirs[0]}")


def _guard(group: Group, step: int, losses: np.ndarray, pnorm: dict, M: int,
           last_ck: int, saver: BackgroundSaver | None = None) -> None:
    """Stop (Diverged) at a logging point where a member's loss or a parameter group is not
    finite: nothing of that step is written; diverged.json marks the last good checkpoint
    (written by then: the saver is flushed first)."""
    bad_loss = ~np.isfinite(losses[:, :M]).all(0)
    bad_groups = {g: ~np.isfinite(np.asarray(v)[:M]) for g, v in pnorm.items()}
    bad = bad_loss.copy()
    for b in bad_groups.values():
        bad |= b
    if not bad.any():
        return
    if saver is not None:
        saver.flush()
    seeds, _, _ = group.member_values()
    where = []
    for d, sl in zip(group.dirs, group.slices()):
        members = np.nonzero(bad[sl])[0]
        if not len(members):
            continue
        groups = sorted(g for g, b in bad_groups.items() if b[sl].any())
        info = {"step": step, "seeds": [int(seeds[sl][i]) for i in members],
                "non_finite": (["loss"] if bad_loss[sl].any() else []) + groups,
                "last_good_checkpoint": last_ck}
        if is_writer():
            (d / "diverged.json").write_text(json.dumps(info, indent=1) + "\n")
        where.append(f"{d} (seeds {', '.join(map(str, info['seeds']))}: "
                     f"{', '.join(info['non_finite'])})")
    raise Diverged(f"diverged: non-finite values by step {step} in {'; '.join(where)}; last good "
                   f"checkpoint: step {last_ck} (lower optim.lr or the init scale)")


def _floats(a) -> list[float]:
    return [float(x) for x in np.atleast_1d(np.asarray(a, dtype=np.float64))]
