"""results/: REPORT.md, summary.json, small figure copies and this section of README.md.

Renders the finished runs of `topicdyn.reproduce.experiments` (one directory per experiment
under the runs root) into the cross-experiment report. Not to be confused with
`topicdyn.report`, which writes one run's own report.md.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from topicdyn.reproduce import sections
from topicdyn.reproduce.experiments import EXPERIMENTS, INIT_RUNS, INIT_SCALES
from topicdyn.reproduce.sections import pm

# ---- numbers for the report -----------------------------------------------------------------
def collect(run_dir: Path) -> dict:
    """Last probes row, last claims, theory, config and t50s of one run."""
    from topicdyn.config import load_config
    from topicdyn.plots import normalised_changes, t50_per_seed
    from topicdyn.plots.common import read_predicted
    from topicdyn.jsonl import read_jsonl

    probes = read_jsonl(run_dir / "probes.jsonl")
    verdicts = read_jsonl(run_dir / "verdicts.jsonl")
    t50 = {name: t50_per_seed(s, v).tolist()
           for name, (s, v) in normalised_changes(probes).items()}
    onset = None
    if probes and "attention/ratio_all" in probes[-1]:
        n = len(probes[-1]["attention/ratio_all"])
        onset = []
        for i in range(n):  # first checkpoint with a same-topic attention ratio >= 1.1
            hit = [r["step"] for r in probes if r["attention/ratio_all"][i] >= 1.1]
            onset.append(float(hit[0]) if hit else float("nan"))
    return {"cfg": load_config(run_dir), "last": probes[-1], "claims": verdicts[-1]["claims"],
            "step": verdicts[-1]["step"],
            "theory": json.loads((run_dir / "theory.json").read_text()), "t50": t50,
            "attention_onset": onset, "predicted": read_predicted(run_dir)}


def claims_rows(claims: list[dict], n: int) -> list[str]:
    from topicdyn.report import claims_table

    rows = claims_table([c for c in claims if c["verdict"] != "not applicable"], n).split("\n")
    na = [f"{c['claim']} ({c['how']})" for c in claims if c["verdict"] == "not applicable"]
    if na:
        rows += ["", "Not applicable to this variant: " + "; ".join(na) + "."]
    return rows


def rel(path: Path, root: Path) -> str:
    """A path relative to the project root when inside it."""
    try:
        return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return str(path)


def small_png(src: Path, dst: Path) -> None:
    """Copy a PNG as an adaptive 256-colour palette image (a few times smaller, same look)."""
    from PIL import Image

    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.suffix != ".png":
        shutil.copyfile(src, dst)
        return
    with Image.open(src) as im:
        im.convert("RGB").quantize(colors=256, dither=Image.Dither.NONE).save(dst, optimize=True)


# ---- the report -----------------------------------------------------------------------------
CROSS_FIGURES = ("two_stage_init_scale.png", "attention_labelling.png")


def clear_own_figures(fig_dir: Path) -> None:
    """Remove the figures this report writes (one folder per experiment, the cross-experiment
    files) and nothing else: results/figures/ also holds the embedding-space and real-text
    scripts' figures."""
    for exp in EXPERIMENTS:
        shutil.rmtree(fig_dir / exp.name, ignore_errors=True)
    for f in CROSS_FIGURES:
        (fig_dir / f).unlink(missing_ok=True)


def write_results(data: dict, results: Path, out_root: Path, meta: dict,
                  root: Path | None = None) -> None:
    """Write results/REPORT.md, summary.json and figures/; run paths are shown relative to
    root (default: the current directory, the project root)."""
    from topicdyn.plots import plot_two_stage

    root = Path.cwd() if root is None else root
    fig_dir = results / "figures"
    clear_own_figures(fig_dir)
    for exp in EXPERIMENTS:
        for f in exp.figures:
            src = out_root / exp.name / "figures" / f
            if src.exists():
                small_png(src, fig_dir / exp.name / f)
    init_runs = [(s, INIT_RUNS[s]) for s in INIT_SCALES if INIT_RUNS[s] in data]
    tmp = out_root / "_cross"
    if init_runs:
        plot_two_stage([out_root / n for _, n in init_runs], tmp / "two_stage_init_scale.png",
                       labels=[f"init scale {s:g}" for s, _ in init_runs],
                       title="Two-stage dynamics of the full model (F) at several init scales\n"
                             "t50 = first checkpoint with half the final change; bars: min..max "
                             "over seeds")
        small_png(tmp / "two_stage_init_scale.png", fig_dir / "two_stage_init_scale.png")
    sections.plot_labelling(data, tmp / "attention_labelling.png")
    small_png(tmp / "attention_labelling.png", fig_dir / "attention_labelling.png")

    n = meta["seeds"]
    L = ["# Reproducing Li, Li & Risteski (ICML 2023) with topicdyn", "",
         f"Generated by `{meta['command']}` on {meta['date']} (code {meta['git']}); "
         f"{meta['machine']}. {len(data)} experiments, {meta['steps']} steps each, {n} seeds per "
         f"experiment (fewer where an experiment says so) trained together under vmap; total wall time {meta['wall_min']:.1f} min. "
         "Reference defaults: T=10 topics x v=10 words, alpha=0.1, N in [100, 150] with START/"
         "END, batch 40, Adam lr 0.01, masking 0.15 with MASK/random/keep 0.8/0.1/0.1, masked "
         "positions removed from the keys. Theory is computed for each experiment's exact "
         "config (`theory.json`) as population values with Monte Carlo standard errors "
         f"({meta.get('theory_sizes', 'sample sizes in theory.json')}); measured losses are "
         "the model's population estimates on fresh documents with their own s.e. (the paired "
         "values on the probes' fixed evaluation documents are kept as a labelled column). "
         "Measured values are mean ± sd over seeds at the last checkpoint.", ""]
    L += sections.overview(data)
    L += ["## Key numbers", ""] + sections.key_numbers(data) + [""]
    L += sections.labelling(data)
    L += sections.architecture(data)
    # init scale
    if init_runs:
        L += ["## Two-stage dynamics and the init scale (regime F)", "",
              "t50 = first checkpoint at which ||W_t - W_0|| reaches half its final value "
              "(per seed, then mean ± sd); lag = t50(W^Q W^K^T) - t50(W^V). Attention onset = "
              "first checkpoint with same-topic/cross-topic attention ratio_all >= 1.1.", "",
              "| init scale | t50 W^V | t50 embedding | t50 W^Q W^K^T | lag | attention onset | "
              "value-first verdict |", "|---|---|---|---|---|---|---|"]
        for s, name in init_runs:
            d = data[name]
            t = d["t50"]
            lag = np.asarray(t["QK"]) - np.asarray(t["WV"])
            vf = [c for c in d["claims"] if c["claim"] == "value-first two-stage order"]
            L.append(f"| {s:g} | {pm(t['WV'])} | {pm(t['E'])} | {pm(t['QK'])} | {pm(lag)} | "
                     f"{pm(d['attention_onset'])} | {vf[0]['verdict'] if vf else '-'} |")
        L += ["", "![two-stage vs init scale](figures/two_stage_init_scale.png)", ""]
    L += sections.keep0(data)
    from topicdyn.reproduce.reduced import section as reduced_section
    L += reduced_section(data)
    # per experiment
    L += ["## Experiments", ""]
    for exp in EXPERIMENTS:
        if exp.name not in data:
            continue
        d = data[exp.name]
        L += [f"### {exp.name}", "", f"{exp.title}. Overrides: "
              f"`{' '.join(exp.overrides) or '(none)'}`; claims at step {d['step']}.", ""]
        L += claims_rows(d["claims"], d["cfg"].train.n_seeds) + [""]
        for f in exp.figures:
            if (fig_dir / exp.name / f).exists():
                L.append(f"![{exp.name} {f}](figures/{exp.name}/{f})")
        L += ["", "Full run report (not in results/): "
              f"`{rel(out_root / exp.name, root)}/report.md`.", ""]
    L += ["## Timing", "", "| experiment | theory (s) | train + probes (s) | of which probes (s) "
          "| figures + report (s) |", "|---|---|---|---|---|"]
    for name, t in meta["timing"].items():
        if t.get("reused"):
            L.append(f"| {name} | reused | | | |")
        else:
            L.append(f"| {name} | {t['theory_s']:.0f} | {t['train_and_probe_s']:.0f} | "
                     f"{t['probe_s']:.0f} | {t['figures_s']:.0f} |")
    (results / "REPORT.md").write_text("\n".join(L) + "\n")

    summary = {"meta": meta, "experiments": {
        name: {"config_overrides": list(next(e for e in EXPERIMENTS if e.name == name).overrides),
               "step": d["step"], "claims": d["claims"], "t50": d["t50"],
               "attention_onset": d["attention_onset"],
               "last_probes": {k: v for k, v in d["last"].items() if k != "step"}}
        for name, d in data.items()}}
    (results / "summary.json").write_text(json.dumps(summary, indent=1, default=float) + "\n")


def redraw_labelling(results: Path) -> Path:
    """figures/attention_labelling.png again from results/summary.json: each experiment's
    last probe row and config (its overrides at the summary's steps and seeds) are all the
    figure reads, so no run directory is needed."""
    from topicdyn.config import ConfigError
    from topicdyn.reproduce.experiments import make_config

    path = Path(results) / "summary.json"
    try:
        summary = json.loads(path.read_text())
        meta, exps = summary["meta"], summary["experiments"]
    except (OSError, ValueError, KeyError):
        raise ConfigError(f"--labelling-only: {path} is missing or damaged; run the "
                          "reproduction first") from None
    data = {e.name: {"last": exps[e.name]["last_probes"],
                     "cfg": make_config(e, meta["steps"], meta["seeds"], 20)}
            for e in EXPERIMENTS if e.name in exps}
    tmp = Path(results) / ".attention_labelling.tmp.png"
    sections.plot_labelling(data, tmp)
    out = Path(results) / "figures" / "attention_labelling.png"
    small_png(tmp, out)
    tmp.unlink()
    return out


README_BEGIN = "<!-- reproduce_paper: begin -->"
README_END = "<!-- reproduce_paper: end -->"


def update_readme(results: Path) -> None:
    """Replace (or append) this script's section of results/README.md; other sections stay."""
    section = f"""{README_BEGIN}
## Paper reproduction

| file | regenerated by |
|---|---|
| `REPORT.md` | `python scripts/reproduce_paper.py` (full: 12 experiments x 5 seeds (the authors' architecture 2), under 30 min on 2 CPU cores) |
| `summary.json` | the same run: every claim, the last probe values and the t50s per experiment |
| `figures/<experiment>/*.png`, `figures/F/value_map.gif` | the same run (copies of `runs/reproduce/<experiment>/figures/`, as 256-colour PNGs) |
| `figures/two_stage_init_scale.png`, `figures/attention_labelling.png` | the same run (cross-experiment figures); `python scripts/reproduce_paper.py --labelling-only` redraws the second from `summary.json` alone |

`python scripts/reproduce_paper.py --quick` is a few-minute version (fewer steps and seeds)
that writes everything under `runs/reproduce-quick/` (git-ignored), its report in
`runs/reproduce-quick/results/REPORT.md`. Finished runs are
reused; `--fresh` retrains, `--reuse-only` only re-renders `results/` from finished runs. Each
run directory also has its own `report.md` and every figure (`topicdyn plot RUN_DIR`,
`topicdyn report RUN_DIR` regenerate them).
{README_END}"""
    path = results / "README.md"
    text = path.read_text() if path.exists() else "# Results\n"
    if README_BEGIN in text and README_END in text:
        a, rest = text.split(README_BEGIN, 1)
        _, b = rest.split(README_END, 1)
        text = a + section + b
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)
