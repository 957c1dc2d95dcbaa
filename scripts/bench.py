"""Benchmark against the reference implementation -> results/bench.json + results/README.md table.

    python scripts/bench.py            # ~6 min on a 2-core CPU
    python scripts/bench.py --quick    # ~2 min, fewer ensemble sizes, no full runs
    python scripts/bench.py --seeds 1 4 16 64 1024 --out results/bench_gpu.json   # on a GPU

Every measurement runs in a fresh subprocess (topicdyn/bench.py): its own compile, its own peak
memory. Ratios are taken against the reference's figures on the project's 2-core machine.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from topicdyn.bench import REFERENCE  # noqa: E402

BEGIN, END = "<!-- bench: begin -->", "<!-- bench: end -->"


def child(case: dict) -> dict:
    print(f"  {json.dumps(case)} ...", flush=True)
    env = dict(os.environ, **case.pop("env", {}))
    p = subprocess.run([sys.executable, "-m", "topicdyn.bench", json.dumps(case)], cwd=ROOT,
                       capture_output=True, text=True, env=env)
    if p.returncode != 0:
        sys.exit(f"bench case {case} failed:\n{p.stderr[-3000:]}")
    out = json.loads(p.stdout.strip().splitlines()[-1])
    print(f"    -> {json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()})}",
          flush=True)
    return out


def gpu_note(platform_name: str) -> str:
    if platform_name == "gpu":
        return "measured on a GPU"
    return ("no GPU was available to this session (the project's device machine was not lent to "
            "it); every figure here is CPU")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer cases, shorter timings")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 4, 16, 64],
                    help="ensemble sizes for the scaling table")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "bench.json")
    ap.add_argument("--no-readme", action="store_true", help="do not update results/README.md")
    a = ap.parse_args()
    seeds = [1, 16] if a.quick else a.seeds
    secs = 3.0 if a.quick else 8.0

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
    res["gpu"] = gpu_note(mm["platform"])
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
                 tokens_speedup_vs_reference=one["content_tokens_per_s"] / REFERENCE["tokens_per_s"],
                 compile_s=one["compile_s"], peak_rss_mb=one["peak_rss_mb"],
                 memory_vs_reference=one["peak_rss_mb"] / REFERENCE["peak_rss_mb"])
        # XLA:CPU's default (MLIR fusion) emitters, which topicdyn.xla replaces on CPU
        r["xla_default_emitters"] = child({"case": "step", "preset": p, "min_seconds": secs,
                                           "env": {"TOPICDYN_XLA_DEFAULTS": "1"}})
        if not a.quick:
            plain = child({"case": "run", "preset": p, "probes": False})
            probed = child({"case": "run", "preset": p, "probes": True})
            # wall-time overhead of a whole run, and the part that grows with the checkpoints
            # (the rest is a one-time evaluation set and compile, overlapping training's own)
            r["run"] = {"without_probes": plain, "with_probes": probed,
                        "probe_overhead": probed["wall_s"] / plain["wall_s"] - 1.0,
                        "probe_per_checkpoint_overhead": probed["checkpoints"]
                        * probed["probe_per_checkpoint_s"] / plain["wall_s"]}
            if p == "F":  # the opt-in embedding-space probes (issue 13) on top of the defaults
                from topicdyn.probes import DEFAULT_PROBES
                from topicdyn.probes.singh import ES_PROBES
                names = ",".join(DEFAULT_PROBES + ES_PROBES)
                es = child({"case": "run", "preset": p, "probes": True,
                            "overrides": [f"train.probes={names}"]})
                r["run"]["with_embedding_space_probes"] = es
                r["run"]["embedding_space_probe_per_checkpoint_overhead"] = (
                    es["checkpoints"] * es["probe_per_checkpoint_s"] / plain["wall_s"])
        r["loss_check"] = child({"case": "loss", "preset": p, "steps": 100 if a.quick else 200})
        res["presets"][p] = r
    res["targets"] = targets(res)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {a.out}")
    if not a.no_readme:
        write_readme_table(res, a.out)
    return 0


def targets(res: dict) -> dict:
    """Issue 5's targets: {name: {"value", "target", "met"}} per preset."""
    out = {}
    for p, r in res["presets"].items():
        t = {"speedup_vs_reference": (r["speedup_vs_reference"], ">= 30", r["speedup_vs_reference"] >= 30),
             "peak_rss_mb": (r["peak_rss_mb"], "<= 300", r["peak_rss_mb"] <= 300),
             "compile_s": (r["compile_s"], "<= 15", r["compile_s"] <= 15)}
        if "run" in r:
            ov = r["run"]["probe_overhead"]
            t["probe_overhead"] = (ov, "<= 0.10", ov <= 0.10)
            ov = r["run"]["probe_per_checkpoint_overhead"]
            t["probe_per_checkpoint_overhead"] = (ov, "<= 0.10", ov <= 0.10)
        out[p] = {k: {"value": v, "target": g, "met": bool(m)} for k, (v, g, m) in t.items()}
    return out


def table(res: dict, out: Path) -> str:
    rows = ["| preset | steps/s | x reference | content tokens/s | compile s | peak MB | "
            "probe overhead: run / per checkpoint | fast vs generic loss, max abs diff |",
            "|---|---|---|---|---|---|---|---|"]
    for p, r in res["presets"].items():
        ov = (f"{100 * r['run']['probe_overhead']:.1f}% / "
              f"{100 * r['run']['probe_per_checkpoint_overhead']:.1f}%" if "run" in r else "-")
        rows.append(f"| {p} | {r['steps_per_s']:.0f} | {r['speedup_vs_reference']:.1f}x | "
                    f"{r['content_tokens_per_s']:.3g} | {r['compile_s']:.1f} | "
                    f"{r['peak_rss_mb']:.0f} | {ov} | "
                    f"{r['loss_check']['max_abs_loss_diff']:.1e} |")
    rows += ["", "Ensemble (members trained together under vmap), member-steps/s:", "",
             "| preset | " + " | ".join(f"{n} seeds" for n in res["presets"]["V"]["ensemble"])
             + " |", "|---|" + "---|" * len(res["presets"]["V"]["ensemble"])]
    for p, r in res["presets"].items():
        rows.append(f"| {p} | " + " | ".join(
            f"{e['member_steps_per_s']:.0f}" for e in r["ensemble"].values()) + " |")
    rel = out.relative_to(ROOT / "results") if out.is_relative_to(ROOT / "results") else out
    return "\n".join([
        "## Benchmark", "",
        f"`python scripts/bench.py` -> `{rel}` ({res['date']}; jax {res['jax']}, "
        f"{res['device']}, {res['cpu_count']} CPUs; {res['gpu']}). Reference (BRIEF §5, "
        f"same 2-core machine type): {REFERENCE['V']['steps_per_s']:.0f} steps/s (V), "
        f"{REFERENCE['F']['steps_per_s']:.0f} (F), {REFERENCE['peak_rss_mb']:.0f} MB.", "",
        *rows, "",
        "Targets (issue 5): " + "; ".join(
            f"{p} {k} {v['value']:.3g} ({v['target']}: {'met' if v['met'] else 'NOT met'})"
            for p, t in res["targets"].items() for k, v in t.items()) + ". Probe overhead of a "
        "run = wall time with probes / without - 1; per checkpoint = checkpoints x the steady "
        "cost of one checkpoint's probes / the run's wall time without probes (the difference "
        "is the one-time evaluation set and probe compilation, which runs beside training's own "
        "compilation).", "",
        *([f"With the embedding-space probes as well (preset F, `train.probes` = the defaults "
           f"+ {', '.join(__import__('topicdyn.probes.singh', fromlist=['x']).ES_PROBES)}): "
           f"{res['presets']['F']['run']['with_embedding_space_probes']['probe_per_checkpoint_s']:.2f}"
           f" s per checkpoint, "
           f"{100 * res['presets']['F']['run']['embedding_space_probe_per_checkpoint_overhead']:.0f}"
           f"% of the run's wall time over "
           f"{res['presets']['F']['run']['with_embedding_space_probes']['checkpoints']} "
           f"checkpoints (opt-in: not in the default probes).", ""]
          if "with_embedding_space_probes" in res["presets"].get("F", {}).get("run", {})
          else []),
        f"Dense float32 matmul rate of this machine: {res['matmul_flops_per_s'] / 1e9:.1f} "
        "GFLOP/s; the step's FLOPs counted for the generic formulation reach "
        + ", ".join(f"{p}: {r['ensemble']['1']['generic_flop_fraction_of_matmul']:.2f}"
                    for p, r in res["presets"].items())
        + " of it (above 1: the fast formulation does less work than the generic one would).",
        "", "With XLA:CPU's default (fusion) emitters instead of the classic ones topicdyn selects "
        "on CPU: " + "; ".join(
            f"{p}: {r['xla_default_emitters']['steps_per_s']:.0f} steps/s, compile "
            f"{r['xla_default_emitters']['compile_s']:.1f} s, peak "
            f"{r['xla_default_emitters']['peak_rss_mb']:.0f} MB" for p, r in res["presets"].items())
        + ".",
    ])


def write_readme_table(res: dict, out: Path) -> None:
    path = ROOT / "results" / "README.md"
    text = path.read_text() if path.exists() else "# Results\n"
    block = f"{BEGIN}\n{table(res, out)}\n{END}"
    if BEGIN in text:
        text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, text,
                      flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)
    print(f"updated {path}")


if __name__ == "__main__":
    sys.exit(main())
