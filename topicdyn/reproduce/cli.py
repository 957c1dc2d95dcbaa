"""Reproduce the claims of Li, Li & Risteski (ICML 2023) and write results/REPORT.md.

Entry point of `python scripts/reproduce_paper.py` and `python -m topicdyn.reproduce`; run it
from the project root (or pass --root): the default runs root runs/reproduce[-quick]/ and
results/ are taken relative to it. See scripts/reproduce_paper.py for the usage.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from topicdyn.reproduce.experiments import (EXPERIMENTS, log, make_config,
                                            run_experiment)
from topicdyn.reproduce.results import collect, update_readme, write_results


def git_state(root: Path) -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root,
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, capture_output=True, text=True).stdout.strip()
        return head + (" (with uncommitted changes)" if dirty else "")
    except Exception:  # noqa: BLE001
        return "unknown"


def parser() -> argparse.ArgumentParser:
    prog = "python -m topicdyn.reproduce" if Path(sys.argv[0]).name == "__main__.py" else None
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a few-minute version")
    p.add_argument("--steps", type=int, help="override the steps per experiment")
    p.add_argument("--seeds", type=int, help="override the seeds per experiment")
    p.add_argument("--only", help="comma-separated experiment names (default: all)")
    p.add_argument("--out", type=Path, help="runs root (default runs/reproduce[-quick])")
    p.add_argument("--results", type=Path,
                   help="results dir (default results/, with --quick <out>/results)")
    p.add_argument("--fresh", action="store_true", help="retrain even finished runs")
    p.add_argument("--reuse-only", action="store_true",
                   help="only re-render results/ from finished runs")
    p.add_argument("--labelling-only", action="store_true",
                   help="only redraw figures/attention_labelling.png from the results "
                        "directory's summary.json (the numbers REPORT.md shows; no runs needed)")
    p.add_argument("--root", type=Path, default=None,
                   help="project root for the default runs/ and results/ paths (default: the "
                        "current directory)")
    return p


def theory_sizes(theory_kw: dict, cfg) -> str:
    """The sample sizes behind the report's numbers, in words."""
    from topicdyn.verdicts import THEORY_BATCHES, THEORY_DOCS

    docs = theory_kw.get("n_docs", THEORY_DOCS)
    batches = theory_kw.get("n_batches", THEORY_BATCHES)
    return (f"optima on {docs} Monte Carlo documents, Bayes floors on {batches} batches of "
            f"{cfg.data.batch_size} documents; the models' population losses on "
            f"{cfg.train.n_pop_eval} fresh documents")


def main(argv=None) -> int:
    p = parser()
    a = p.parse_args(argv)
    from topicdyn.process import enable_compilation_cache
    enable_compilation_cache()  # compiled programs shared with earlier runs (results unchanged)
    t_start = time.perf_counter()
    root = (a.root or Path.cwd()).resolve()
    steps = a.steps or (300 if a.quick else 5000)  # full: the reference code's 5000
    seeds = a.seeds or (2 if a.quick else 5)
    n_ckpt = 10 if a.quick else 20
    theory_kw = {"n_docs": 1000, "n_batches": 10} if a.quick else {}
    out_root = a.out or root / "runs" / ("reproduce-quick" if a.quick else "reproduce")
    results = a.results or (out_root / "results" if a.quick else root / "results")
    if a.labelling_only:
        from topicdyn.config import ConfigError
        from topicdyn.reproduce.results import redraw_labelling
        try:
            log(f"wrote {redraw_labelling(results)}")
        except ConfigError as e:
            print(f"reproduce_paper: error: {e}", file=sys.stderr)
            return 2
        return 0
    chosen = [e for e in EXPERIMENTS if not a.only or e.name in a.only.split(",")]
    if a.only and len(chosen) != len(a.only.split(",")):
        p.error(f"--only: unknown experiment; choose from {', '.join(e.name for e in EXPERIMENTS)}")
    log(f"{len(chosen)} experiments, {steps} steps, {seeds} seeds -> {out_root}")
    timing = {}
    for exp in chosen:
        cfg = make_config(exp, steps, seeds, n_ckpt)
        timing[exp.name] = run_experiment(exp, cfg, out_root / exp.name,
                                          theory_kw, a.fresh, a.reuse_only)
    data = {e.name: collect(out_root / e.name) for e in chosen}
    results.mkdir(parents=True, exist_ok=True)
    wall = (time.perf_counter() - t_start) / 60
    meta = {"command": "python scripts/reproduce_paper.py" + (" --quick" if a.quick else "")
            + (f" --steps {a.steps}" if a.steps else "") + (f" --seeds {a.seeds}" if a.seeds
                                                             else ""),
            "date": time.strftime("%Y-%m-%d %H:%M"), "git": git_state(root),
            "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores, "
                       f"Python {platform.python_version()}",
            "steps": steps, "seeds": seeds, "wall_min": wall, "timing": timing,
            "theory_sizes": theory_sizes(theory_kw, make_config(chosen[0], steps, seeds,
                                                                n_ckpt))}
    prev = results / "summary.json"
    if all(t.get("reused") for t in timing.values()) and prev.exists():
        old = json.loads(prev.read_text())["meta"]  # a re-render keeps the training times
        meta.update({k: old[k] for k in ("wall_min", "timing", "date", "git") if k in old})
    write_results(data, results, out_root, meta, root)
    if not a.quick and a.results is None:
        update_readme(results)
    log(f"wrote {results / 'REPORT.md'} in {(time.perf_counter() - t_start) / 60:.1f} min")
    return 0
