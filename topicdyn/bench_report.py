"""The benchmark's targets (issue 16) and its table in results/README.md, from bench.json."""
from __future__ import annotations

import math
import re
from pathlib import Path

from topicdyn.bench import REFERENCE

BEGIN, END = "<!-- bench: begin -->", "<!-- bench: end -->"
WITHIN = 1.5  # the selected implementation within this factor of the fastest measured one


def n_exponents(grid: list[dict]) -> list[dict]:
    """Per (vocabulary, batch): the exponent k of time ~ N^k of the selected implementation
    between the shortest and the longest documents of the grid (1: linear)."""
    out = []
    keys = sorted({(r["v"], r["batch"]) for r in grid})
    for v, b in keys:
        rows = sorted((r for r in grid if r["v"] == v and r["batch"] == b),
                      key=lambda r: r["N"][0])
        pts = [(sum(r["N"]) / 2, r["impls"].get(r["selected"], {}).get("s_per_step"))
               for r in rows]
        pts = [(n, t) for n, t in pts if t]
        if len(pts) >= 2:
            (n0, t0), (n1, t1) = pts[0], pts[-1]
            out.append({"v": v, "batch": b, "N": [n0, n1],
                        "exponent": math.log(t1 / t0) / math.log(n1 / n0)})
    return out


def targets(res: dict) -> dict:
    """Issue 16's targets: {name: {"value", "target", "met"}}."""
    t: dict = {}
    for p, r in res["presets"].items():
        need = 300 if p == "V" else 100
        t[f"{p} speed x reference"] = (r["speedup_vs_reference"], f">= {need}",
                                       r["speedup_vs_reference"] >= need)
        t[f"{p} peak MB"] = (r["peak_rss_mb"], "< 600", r["peak_rss_mb"] < 600)
        t[f"{p} cores used"] = (r["cores_used"], ">= 1.7", r["cores_used"] >= 1.7)
        t[f"{p} compile s"] = (r["compile_s"], "<= 15", r["compile_s"] <= 15)
        t[f"{p} ensemble amortisation"] = (r["amortisation"], ">= 2", r["amortisation"] >= 2)
        if "whole_run" in r:
            w = r["whole_run"]["overhead_warm"]
            t[f"{p} probes+theory, warm"] = (1 + w, "<= 1.25x", 1 + w <= 1.25)
            c = r["whole_run"]["overhead_cold"]
            t[f"{p} probes+theory, cold"] = (1 + c, "(reported)", None)
    grid = res.get("scaling")
    if grid:
        ratios = [x for x in (r.get("selected_vs_fastest") for r in grid)
                  if x is not None and x == x]  # not NaN
        worst = max(ratios) if ratios else float("nan")
        t["scaling: selected / fastest, worst point"] = (worst, f"<= {WITHIN}",
                                                         worst <= WITHIN)
        ex = [e["exponent"] for e in n_exponents(grid)]
        if ex:
            t["scaling: F time ~ N^k, largest k"] = (max(ex), "<= 1.1", max(ex) <= 1.1)
    return {k: {"value": v, "target": g, "met": m} for k, (v, g, m) in t.items()}


def _grid_table(grid: list[dict]) -> list[str]:
    rows = ["| T v | N | batch | selected | lean s/step | fast s/step | generic s/step | "
            "selected / fastest |", "|---|---|---|---|---|---|---|---|"]

    def cell(r, impl):
        x = r["impls"].get(impl)
        if x is None:
            return "not exact"
        if "s_per_step" in x:
            return f"{x['s_per_step']:.3g}"
        return f"not run (est. {x['estimated_s']:.2g})"
    for r in grid:
        ratio = r.get("selected_vs_fastest")
        rows.append(f"| {10 * r['v']} | {r['N'][0]}-{r['N'][1]} | {r['batch']} | "
                    f"{r['selected']} | {cell(r, 'lean')} | {cell(r, 'fast')} | "
                    f"{cell(r, 'generic')} | "
                    f"{'-' if ratio is None or ratio != ratio else f'{ratio:.2f}'} |")
    return rows


def _head(intro: str, columns: list[str]) -> list[str]:
    """A paragraph, then a markdown table's header and rule."""
    return ["", intro, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]


def table(res: dict, out: Path, root: Path) -> str:
    pre = res["presets"]
    rows = ["| preset | steps/s | x reference | on one device | cores used | content tokens/s "
            "| compile s | peak MB | fast vs generic loss, max abs diff |",
            "|---|---|---|---|---|---|---|---|---|"]
    for p, r in pre.items():
        rows.append(f"| {p} | {r['steps_per_s']:.0f} | {r['speedup_vs_reference']:.0f}x | "
                    f"{r['one_device']['steps_per_s']:.0f} | {r['cores_used']:.2f} | "
                    f"{r['content_tokens_per_s']:.3g} | {r['compile_s']:.1f} | "
                    f"{r['peak_rss_mb']:.0f} | {r['loss_check']['max_abs_loss_diff']:.1e} |")
    if all("parts" in r for r in pre.values()):
        rows += _head("Where one member's step goes: the sampler and the training program each "
                      "alone on one device (microseconds per step, cores kept busy); the "
                      "training program's matmul work per step and rate; the same with XLA's "
                      "intra-op threads off (`--xla_cpu_multi_thread_eigen=false`):",
                      ["preset", "sampler us (cores)", "training us (cores)",
                       "training MFLOP, GFLOP/s", "one thread: sampler us, training us"])
        for p, r in pre.items():
            a, b = r["parts"], r.get("parts_one_thread", {})
            one = (f"{b['sampler_us_per_step']:.0f}, {b['train_us_per_step']:.0f}" if b
                   else "-")
            rows.append(f"| {p} | {a['sampler_us_per_step']:.0f} ({a['sampler_cores']:.2f}) | "
                        f"{a['train_us_per_step']:.0f} ({a['train_cores']:.2f}) | "
                        f"{a['train_mflop_per_step']:.1f}, {a['train_gflop_per_s']:.0f} | "
                        f"{one} |")
    sizes = list(pre["V"]["ensemble"])
    rows += ["", "Ensembles (members trained together under vmap, spread over the CPU's "
             "devices), member-steps/s:", "",
             "| preset | " + " | ".join(f"{n} seeds" for n in sizes) + " |",
             "|---|" + "---|" * len(sizes)]
    for p, r in pre.items():
        rows.append(f"| {p} | " + " | ".join(
            f"{e['member_steps_per_s']:.0f}" for e in r["ensemble"].values()) + " |")
    if all("whole_run" in r for r in pre.values()):
        rows += _head("A whole default `topicdyn train` (5000 steps, 1 seed, no figures), wall "
                      "seconds, cold (empty caches) and warm (the same caches again: theory "
                      "results and compiled programs; the median of 3 runs, with and without "
                      "probes interleaved):",
                      ["preset", "without probes cold / warm",
                       "with probes and theory cold / warm", "overhead cold / warm"])
        for p, r in pre.items():
            w = r["whole_run"]
            rows.append(f"| {p} | {w['without_probes']['cold_s']:.1f} / "
                        f"{w['without_probes']['warm_s']:.1f} | "
                        f"{w['with_probes']['cold_s']:.1f} / {w['with_probes']['warm_s']:.1f} | "
                        f"{100 * w['overhead_cold']:.0f}% / {100 * w['overhead_warm']:.0f}% |")
    es = pre.get("F", {}).get("embedding_space_probes")
    if es:
        rows += ["", f"The opt-in embedding-space probes on top of the defaults (preset F): "
                 f"{es['with_probes']['probe_per_checkpoint_s']:.2f} s per checkpoint, "
                 f"{100 * es['per_checkpoint_overhead']:.0f}% of the run's wall time over "
                 f"{es['with_probes']['checkpoints']} checkpoints."]
    grid = res.get("scaling")
    if grid:
        rows += ["", "Scaling grid (preset F at width 104, one member; the training program's "
                 "steady seconds per step for every exact implementation, forced in turn; "
                 "`not run`: its estimated seconds per step, `models/cost.py`):", "",
                 *_grid_table(grid), "", "F's time per step against the document length "
                 "(exponent k of t ~ N^k between N ~ 125 and N ~ 2000): " + ", ".join(
                     f"T v = {10 * e['v']}, batch {e['batch']}: {e['exponent']:.2f}"
                     for e in n_exponents(grid)) + "."]
    rel = out.relative_to(root / "results") if out.is_relative_to(root / "results") else out
    la0 = ", ".join(f"{x:.1f}" for x in res["load_average_at_start"])
    la1 = ", ".join(f"{x:.1f}" for x in res.get("load_average_at_end", ()))
    met = "; ".join(f"{k} {v['value']:.3g} ({v['target']}"
                    + ("" if v["met"] is None else f": {'met' if v['met'] else 'NOT met'}")
                    + ")" for k, v in res["targets"].items())
    return "\n".join([
        "## Benchmark", "",
        f"`python scripts/bench.py` -> `{rel}` ({res['date']}, {res.get('minutes', 0):.0f} "
        f"min; jax {res['jax']}, {res['device']}, {res['cpu_count']} CPUs, load average "
        f"{la0} at the start, {la1} at the end; {res['gpu']}). Reference on the same 2-core "
        f"machine (quiet, interleaved): {REFERENCE['V']['steps_per_s']:.0f} steps/s (V), "
        f"{REFERENCE['F']['steps_per_s']:.0f} (F), {REFERENCE['peak_rss_mb']:.0f} MB.", "",
        *rows, "", f"Targets (issue 16): {met}.",
        "", f"Dense float32 matmul rate of this machine: {res['matmul_flops_per_s'] / 1e9:.1f} "
        "GFLOP/s.",
    ])


def write_readme_table(res: dict, out: Path, root: Path) -> None:
    path = root / "results" / "README.md"
    text = path.read_text() if path.exists() else "# Results\n"
    block = f"{BEGIN}\n{table(res, out, root)}\n{END}"
    if BEGIN in text:
        text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, text,
                      flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)
    print(f"updated {path}")
