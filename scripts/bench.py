"""Benchmark against the reference implementation -> results/bench.json + results/README.md table.

    python scripts/bench.py            # ~30 min on a 2-core CPU (the scaling grid is most of it)
    python scripts/bench.py --quick    # a few minutes: fewer ensembles, no whole runs, no grid
    python scripts/bench.py --seeds 1 64 1024 --out results/bench_gpu.json   # on a GPU

Every measurement runs in a fresh subprocess (topicdyn/bench.py's cases, or the `topicdyn`
command itself for whole runs): its own compile, its own peak memory. Ratios are taken against
the reference's figures on the project's 2-core machine (topicdyn.bench.REFERENCE); the load
average is recorded before and after, as the machine may be shared.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from topicdyn.bench import REFERENCE  # noqa: E402
from topicdyn.bench_report import targets, write_readme_table  # noqa: E402

# the scaling grid (issue 16): preset F at the reference width 104, over the vocabulary (T v,
# T = 10), the document length and the batch size
GRID_V = (10, 40, 160, 640)
GRID_N = ((100, 150), (400, 600), (1600, 2400))
GRID_B = (40, 160, 640)


def child(case: dict, env: dict | None = None) -> dict:
    print(f"  {json.dumps(case)} ...", flush=True)
    p = subprocess.run([sys.executable, "-m", "topicdyn.bench", json.dumps(case)], cwd=ROOT,
                       capture_output=True, text=True, env=dict(os.environ, **(env or {})))
    if p.returncode != 0:
        sys.exit(f"bench case {case} failed:\n{p.stderr[-3000:]}")
    out = json.loads(p.stdout.strip().splitlines()[-1])
    brief = {k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()
             if not isinstance(v, dict)}
    print(f"    -> {json.dumps(brief)}", flush=True)
    return out


def cli_run(preset: str, probes: bool, cache: Path) -> float:
    """Wall seconds of a whole default `topicdyn train --preset P` (no figures), as a user runs
    it, with its caches (theory results, compiled programs) in `cache`."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "topicdyn", "train", "--preset", preset, "--out",
               f"{tmp}/run", "--no-progress", "--no-figures"] + ([] if probes else
                                                                ["--no-probes"])
        t = time.perf_counter()
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                           env=dict(os.environ, TOPICDYN_CACHE=str(cache)))
        wall = time.perf_counter() - t
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{p.stderr[-3000:]}")
    print(f"    whole run {preset} probes={probes} cache={cache.name}: {wall:.1f} s", flush=True)
    return wall


WARM_REPEATS = 3  # warm runs of each kind, interleaved; their medians make the warm ratio


def whole_runs(preset: str) -> dict:
    """Cold (empty caches) and warm (the same caches again) whole runs with and without the
    probes and the theory; overhead = with / without - 1. A warm run takes seconds on a
    shared machine whose load comes and goes: the runs with and without probes alternate,
    WARM_REPEATS each, and the ratio is that of their medians (every run is recorded)."""
    import statistics

    keys = {False: "without_probes", True: "with_probes"}
    with tempfile.TemporaryDirectory() as tmp:
        caches = {p: Path(tmp) / ("probes" if p else "plain") for p in keys}
        out = {keys[p]: {"cold_s": cli_run(preset, p, caches[p]), "warm_runs_s": []}
               for p in keys}
        for _ in range(WARM_REPEATS):
            for p in keys:
                out[keys[p]]["warm_runs_s"].append(cli_run(preset, p, caches[p]))
    for k in keys.values():
        out[k]["warm_s"] = statistics.median(out[k]["warm_runs_s"])
    for t in ("cold", "warm"):
        out[f"overhead_{t}"] = out["with_probes"][f"{t}_s"] / out["without_probes"][f"{t}_s"] - 1
    return out


def scaling_grid() -> list[dict]:
    rows = []
    for v in GRID_V:
        for n_min, n_max in GRID_N:
            for b in GRID_B:
                over = [f"data.v={v}", "model.d_model=104", f"data.N_min={n_min}",
                        f"data.N_max={n_max}", f"data.batch_size={b}"]
                r = child({"case": "scaling", "preset": "F", "overrides": over})
                r.update(v=v, T=10, N=[n_min, n_max], batch=b)
                rows.append(r)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer cases, shorter timings")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 4, 16, 64],
                    help="ensemble sizes for the scaling table")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "bench.json")
    ap.add_argument("--no-readme", action="store_true", help="do not update results/README.md")
    ap.add_argument("--no-grid", action="store_true", help="skip the scaling grid")
    a = ap.parse_args()
    seeds = [1, 16] if a.quick else a.seeds
    secs = 3.0 if a.quick else 8.0
    t0 = time.perf_counter()

    import jax
    res = {"date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
           "jax": jax.__version__, "python": platform.python_version(),
           "machine": platform.machine(), "cpu_count": os.cpu_count(),
           "load_average_at_start": os.getloadavg(), "reference": REFERENCE,
           "config": "reference defaults: T=10, v=10, alpha=0.1, N in [100, 150], batch 40, "
                     "width 104, one layer, Adam lr 0.01"}
    print("matmul roofline")
    mm = child({"case": "matmul"})
    res["matmul_flops_per_s"] = mm["flops_per_s"]
    res["device"], res["platform"] = mm["device"], mm["platform"]
    res["gpu"] = ("measured on a GPU" if mm["platform"] == "gpu" else
                  "no GPU was available to this session (the project's device machine was not "
                  "lent to it); every figure here is CPU")
    res["presets"] = {}
    for p in ("V", "F"):
        print(f"preset {p}")
        r = {"ensemble": {}}
        for n in seeds:
            s = child({"case": "step", "preset": p, "n_seeds": n, "min_seconds": secs})
            s["generic_flop_fraction_of_matmul"] = (
                s["generic_flops_per_step"] * s["steps_per_s"] / mm["flops_per_s"])
            r["ensemble"][str(n)] = s
        one = r["ensemble"]["1"]
        ref = REFERENCE[p]["steps_per_s"]
        r.update(steps_per_s=one["steps_per_s"], speedup_vs_reference=one["steps_per_s"] / ref,
                 content_tokens_per_s=one["content_tokens_per_s"],
                 compile_s=one["compile_s"], peak_rss_mb=one["peak_rss_mb"],
                 cores_used=one["cores_used"])
        # the same step on one device: what sampling ahead on a second core adds
        r["one_device"] = child({"case": "step", "preset": p, "devices": 1, "min_seconds": secs})
        # where a step goes: the two programs alone, with XLA's intra-op threads and without
        r["parts"] = child({"case": "parts", "preset": p, "min_seconds": secs / 2})
        r["parts_one_thread"] = child({"case": "parts", "preset": p, "min_seconds": secs / 2},
                                      env={"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false"})
        big = str(max(seeds))
        r["amortisation"] = (r["ensemble"][big]["member_steps_per_s"]
                             / one["member_steps_per_s"])
        if not a.quick:
            r["whole_run"] = whole_runs(p)
            if p == "F":  # the opt-in embedding-space probes (issue 13) on top of the defaults
                from topicdyn.probes import DEFAULT_PROBES
                from topicdyn.probes.singh import ES_PROBES
                names = ",".join(DEFAULT_PROBES + ES_PROBES)
                plain = child({"case": "run", "preset": p, "probes": False})
                es = child({"case": "run", "preset": p, "probes": True,
                            "overrides": [f"train.probes={names}"]})
                r["embedding_space_probes"] = {
                    "without_probes": plain, "with_probes": es,
                    "per_checkpoint_overhead": es["checkpoints"] * es["probe_per_checkpoint_s"]
                    / plain["wall_s"]}
        r["loss_check"] = child({"case": "loss", "preset": p, "steps": 100 if a.quick else 200})
        res["presets"][p] = r
    if not (a.quick or a.no_grid):
        print("scaling grid (preset F, width 104)")
        res["scaling"] = scaling_grid()
    res["load_average_at_end"] = os.getloadavg()
    res["minutes"] = (time.perf_counter() - t0) / 60
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2) + "\n")  # the measurements first, kept whatever
    res["targets"] = targets(res)
    a.out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {a.out}")
    if not a.no_readme:
        write_readme_table(res, a.out, ROOT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
