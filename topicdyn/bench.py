"""Benchmark of the training step against the reference implementation (BRIEF §5).

Each measurement runs in its own subprocess (`python -m topicdyn.bench CASE_JSON`), so that its
peak resident memory is its own and one compile cache never helps another. The driver
(`scripts/bench.py`) collects them into results/bench.json.

Cases:
  step      compile time of the training chunk, then steady-state optimizer steps/s over chunks of
            `train.chunk` steps (compilation excluded), for n_seeds members under vmap
  run       a whole `run.train` at the default checkpoint schedule, with or without the probes
            (the probe overhead is the ratio of the two wall times)
  loss      per-step losses of the fast path vs the generic formulation on the same seeds
  matmul    the dense float32 matmul rate of this machine (the hardware roofline of the FLOP ratio)
  parts     the sampler and the training program alone: microseconds per step, cores, GFLOP/s
"""
from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import time

# the reference implementation on the project's 2-core CPU machine: quiet, interleaved runs at 2
# threads (issue 16; BRIEF §5 gives 28 and 26 from a busier measurement)
REFERENCE = {"V": {"steps_per_s": 36.0}, "F": {"steps_per_s": 32.0},
             "tokens_per_s": 140_000.0, "peak_rss_mb": 600.0}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux


def bench_config(preset: str, n_seeds: int = 1, overrides: tuple[str, ...] = ()):
    """The reference configuration (the defaults: T=10, v=10, alpha=0.1, N in [100, 150],
    batch 40, width 104, Adam lr 0.01) for `preset`, with n_seeds members."""
    from topicdyn.config import preset as make_preset

    return make_preset(preset, [f"train.n_seeds={n_seeds}", *overrides])


def content_tokens_per_step(cfg) -> float:
    """Expected content tokens in one batch of one member (N uniform on [N_min, N_max])."""
    d = cfg.data
    return d.batch_size * (d.N_min + d.N_max) / 2.0


def generic_flops_per_step(cfg) -> float:
    """Matmul FLOPs of one optimizer step of one member in the generic formulation: every
    position of every document runs the projections, scores, attention-weighted values and the
    decoder (embedding lookups are gathers: 0 FLOPs); backward = 2 x forward."""
    d, nv, L, B = cfg.d_model, cfg.data.n_vocab, cfg.data.seq_len, cfg.data.batch_size
    if cfg.model.name == "embedding_only":
        fwd = 2 * L * d * d + 2 * L * L * d + 2 * L * d * nv
    else:
        fwd = 3 * 2 * L * d * d + 2 * 2 * L * L * d + 2 * L * d * nv
    return 3.0 * B * fwd


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def case_step(c: dict) -> dict:
    """Steady-state steps/s of the host loop's stepping (topicdyn.loop.Stepper: the sampler and
    training programs, the next block sampled ahead, on a spare device when there is one),
    compilation excluded; cores used = process CPU time / wall time over the timed steps."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from topicdyn.devices import Stepper, member_mesh, shard, training_devices
    from topicdyn.models.kernels import select
    from topicdyn.training import TrainState, ensemble_seeds, init_state

    cfg = bench_config(c["preset"], c.get("n_seeds", 1), tuple(c.get("overrides", ())))
    seeds = np.asarray(ensemble_seeds(cfg))
    mesh, spare = training_devices(member_mesh(), len(seeds))
    n_dev = mesh.devices.size
    Mp = -(-len(seeds) // n_dev) * n_dev
    seeds = np.concatenate([seeds, np.repeat(seeds[:1], Mp - len(seeds))])
    state = shard(TrainState(*jax.device_get(init_state(cfg, jnp.asarray(seeds)))), mesh)
    # stepping goes on past cfg.train.steps for as long as the timing needs: the Stepper must
    # keep sampling ahead there too (past its total it samples each block when it trains it)
    stepper = Stepper(cfg, mesh, spare, seeds, None, None, total=2 ** 62)
    K = stepper.block
    t = time.perf_counter()
    state, m = stepper.advance(state, 0, K)  # compiles both programs
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t
    steps = K
    state, m = stepper.advance(state, steps, K)  # warm-up
    jax.block_until_ready(m)
    steps += K
    t, cpu0, timed = time.perf_counter(), _cpu_seconds(), 0
    while True:
        state, m = stepper.advance(state, steps, K)
        jax.block_until_ready(m)
        steps += K
        timed += K
        el = time.perf_counter() - t
        if el >= c.get("min_seconds", 8.0) and timed >= c.get("min_steps", 5 * K):
            break
    cores = (_cpu_seconds() - cpu0) / el
    rate = timed / el
    return {"compile_s": compile_s, "steps_per_s": rate,
            "member_steps_per_s": rate * cfg.train.n_seeds,
            "content_tokens_per_s": rate * cfg.train.n_seeds * content_tokens_per_step(cfg),
            "generic_flops_per_step": generic_flops_per_step(cfg) * cfg.train.n_seeds,
            "timed_steps": timed, "impl": select(cfg), "cores_used": cores,
            "devices": n_dev, "sampler_on_spare_device": spare is not None,
            "steps_per_dispatch": K}


def case_run(c: dict) -> dict:
    from topicdyn.run import train

    cfg = bench_config(c["preset"], 1, tuple(c.get("overrides", ())))
    with tempfile.TemporaryDirectory() as tmp:
        hook = None
        if c.get("probes"):
            from topicdyn.probes.runner import CheckpointProber
            hook = CheckpointProber(cfg, tmp)
        t = time.perf_counter()
        train(cfg, tmp, progress=False, on_checkpoint=hook)
        wall = time.perf_counter() - t
        n_ckpt = sum(1 for _ in open(os.path.join(tmp, "checkpoints.jsonl")))
    out = {"wall_s": wall, "steps": cfg.train.steps, "checkpoints": n_ckpt}
    if hook is not None:
        # one-time (evaluation set, Bayes table, first call = compile) vs per checkpoint
        times = hook.probe_seconds
        out["probe_seconds_in_worker"] = hook.seconds
        out["probe_fixed_s"] = hook.setup_seconds + times[0]
        out["probe_per_checkpoint_s"] = float(sum(times[1:]) / max(1, len(times) - 1))
    return out


def case_loss(c: dict) -> dict:
    """Per-step training losses of the default (fast) and the generic path, same seed and data."""
    import jax
    import numpy as np

    from topicdyn.training import ensemble_seeds, init_state, make_chunk_fn

    steps = c.get("steps", 200)
    out = {}
    for impl in ("auto", "generic"):
        cfg = bench_config(c["preset"], 1, (f"model.impl={impl}", f"train.chunk={steps}"))
        seeds = ensemble_seeds(cfg)
        _, m = make_chunk_fn(cfg)(init_state(cfg, seeds), seeds, np.int32(0), np.int32(steps))
        out[impl] = np.asarray(jax.device_get(m["loss"]))[:, 0]
    diff = np.abs(out["auto"] - out["generic"])
    return {"steps": steps, "max_abs_loss_diff": float(diff.max()),
            "final_loss_fast": float(out["auto"][-1]), "final_loss_generic":
            float(out["generic"][-1]), "mean_loss_fast": float(out["auto"].mean()),
            "mean_loss_generic": float(out["generic"].mean())}


def case_matmul(c: dict) -> dict:
    import jax
    import jax.numpy as jnp

    n = c.get("n", 2048)
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
    dot = jax.jit(jnp.dot)
    jax.block_until_ready(dot(a, b))
    reps, t = 0, time.perf_counter()
    while time.perf_counter() - t < c.get("min_seconds", 3.0):
        jax.block_until_ready(dot(a, b))
        reps += 1
    return {"n": n, "flops_per_s": 2.0 * n ** 3 * reps / (time.perf_counter() - t)}


def case_scaling(c: dict) -> dict:
    """One point of the scaling grid: steady-state seconds per training step (the training
    program on one block of batches, one member, compilation excluded) of every implementation
    exact for the config, each forced in turn; the one topicdyn selects; an implementation whose
    estimated work (models/cost.py) exceeds max_gflop per step, or whose estimated memory
    exceeds half the machine's, is not run (its estimate is reported), unless it is the
    selected one."""
    import jax
    import numpy as np

    import topicdyn.models.kernels as kernels
    from topicdyn.memory import available_bytes, estimate_peak_bytes
    from topicdyn.models.cost import step_cost, step_flops
    from topicdyn.training import (ensemble_seeds, init_state, programs, steps_per_dispatch)

    cfg = bench_config(c.get("preset", "F"), 1, tuple(c.get("overrides", ())))
    chosen = kernels.select(cfg)
    impls = [k.name for k in kernels.KERNELS if kernels.exact(k, cfg)] + ["generic"]
    have = available_bytes() or 0
    real_select = kernels.select
    out = {"selected": chosen, "impls": {}}
    try:
        for impl in impls:
            kernels.select = lambda _cfg, impl=impl: impl
            programs.cache_clear()
            gflop = step_flops(impl, cfg) / 1e9
            mem = estimate_peak_bytes(cfg, 1)
            row = {"estimated_gflop": gflop, "estimated_s": step_cost(impl, cfg),
                   "estimated_mb": mem / 2 ** 20}
            # the selected implementation always runs: it is what a user of the config gets
            if impl != chosen and (gflop > c.get("max_gflop", 1500.0)
                                   or (have and mem > 0.5 * have)):
                row["skipped"] = ("estimated memory above half the machine's" if have and
                                  mem > 0.5 * have else
                                  f"estimated work above {c.get('max_gflop', 1500.0):g} GFLOP")
                out["impls"][impl] = row
                continue
            S = steps_per_dispatch(cfg, 1)
            sample, train = programs(cfg, S)
            seeds = ensemble_seeds(cfg)
            state = init_state(cfg, seeds)
            batches = sample(seeds, np.int32(0))
            t = time.perf_counter()
            state, m = train(state, batches, np.int32(1))
            jax.block_until_ready(m)
            row["compile_s"] = time.perf_counter() - t
            steps, t = 0, time.perf_counter()
            while steps < c.get("min_steps", 2) or time.perf_counter() - t < c.get(
                    "min_seconds", 1.5):
                n = min(S, max(1, c.get("min_steps", 2)))
                state, m = train(state, batches, np.int32(n))
                jax.block_until_ready(m)
                steps += n
            row["s_per_step"] = (time.perf_counter() - t) / steps
            out["impls"][impl] = row
    finally:
        kernels.select = real_select
        programs.cache_clear()
    timed = {k: v["s_per_step"] for k, v in out["impls"].items() if "s_per_step" in v}
    if timed:
        best = min(timed, key=timed.get)
        out["fastest"] = best
        out["selected_vs_fastest"] = (timed[chosen] / timed[best] if chosen in timed
                                      else float("nan"))
    return out


def case_parts(c: dict) -> dict:
    """Where one member's step goes: the sampler program alone and the training program alone,
    each on the default device, steady-state microseconds per step and the cores each keeps busy
    (process CPU time / wall time), and the training program's matmul work (models/cost.py's
    count for the selected implementation) per second."""
    import jax
    import numpy as np

    from topicdyn.models.cost import step_flops
    from topicdyn.models.kernels import select
    from topicdyn.training import ensemble_seeds, init_state, programs, steps_per_dispatch

    cfg = bench_config(c["preset"], 1, tuple(c.get("overrides", ())))
    S = steps_per_dispatch(cfg, 1)
    sample, train = programs(cfg, S)
    seeds = ensemble_seeds(cfg)
    state = init_state(cfg, seeds)
    batches = sample(seeds, np.int32(0))
    state, m = train(state, batches, np.int32(S))
    jax.block_until_ready(m)

    def timed(fn):
        fn()
        t, cpu0, n = time.perf_counter(), _cpu_seconds(), 0
        while time.perf_counter() - t < c.get("min_seconds", 3.0):
            fn()
            n += S
        el = time.perf_counter() - t
        return el / n * 1e6, (_cpu_seconds() - cpu0) / el

    box = {"state": state}

    def run_train():
        box["state"], mm = train(box["state"], batches, np.int32(S))
        jax.block_until_ready(mm)

    s_us, s_cores = timed(lambda: jax.block_until_ready(sample(seeds, np.int32(S))))
    t_us, t_cores = timed(run_train)
    impl = select(cfg)
    flops = step_flops(impl, cfg)
    return {"impl": impl, "sampler_us_per_step": s_us, "sampler_cores": s_cores,
            "train_us_per_step": t_us, "train_cores": t_cores,
            "train_mflop_per_step": flops / 1e6, "train_gflop_per_s": flops / t_us / 1e3}


CASES = {"step": case_step, "parts": case_parts, "run": case_run, "loss": case_loss,
         "matmul": case_matmul, "scaling": case_scaling}


def run_case(c: dict) -> dict:
    """Run one case in this process; adds the process's peak memory and the platform."""
    import jax

    out = CASES[c["case"]](c)
    out.update(peak_rss_mb=_peak_rss_mb(), device=jax.devices()[0].device_kind,
               platform=jax.default_backend())
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    case = json.loads(argv[0])
    from topicdyn.process import configure_host_devices, limit_malloc_arenas
    limit_malloc_arenas()  # as the CLI does, before jax is imported
    configure_host_devices(case.get("devices"))  # default: as the CLI does
    print(json.dumps(run_case(case)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
