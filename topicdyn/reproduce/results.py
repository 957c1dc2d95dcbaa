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

from topicdyn.reproduce.experiments import ARCH_RUNS, EXPERIMENTS, INIT_RUNS, INIT_SCALES
from topicdyn.verdicts import mean_sd

# ---- numbers for the report -----------------------------------------------------------------
def pm(vals, digits: int = 4) -> str:
    m, s = mean_sd(vals)
    return f"{m:.{digits}g} ± {s:.2g}" if np.asarray(vals).size > 1 else f"{m:.{digits}g}"


def collect(run_dir: Path) -> dict:
    """Last probes row, last claims, theory, config and t50s of one run."""
    from topicdyn.config import load_config
    from topicdyn.plots import normalised_changes, t50_per_seed
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
            "attention_onset": onset}


def claims_rows(claims: list[dict], n: int) -> list[str]:
    from topicdyn.report import cell, fmt

    rows = ["| claim | paper's statement | our prediction | measured (mean ± sd over "
            f"{n} seeds) | verdict |", "|---|---|---|---|---|"]
    for c in claims:
        if c["verdict"] == "not applicable":
            continue  # listed once per experiment below the table
        meas = f"{fmt(c['measured'])} ± {fmt(c['sd'], 2)}" if n > 1 else fmt(c["measured"])
        rows.append("| " + " | ".join(cell(x) for x in (
            c["claim"], c["paper"], fmt(c["predicted"]), meas, f"**{c['verdict']}**")) + " |")
    na = [f"{c['claim']} ({c['how']})" for c in claims if c["verdict"] == "not applicable"]
    if na:
        rows += ["", "Not applicable to this variant: " + "; ".join(na) + "."]
    return rows


def key_numbers(data: dict) -> list[str]:
    """Templated one-line summaries (numbers only; the tables below have the detail)."""
    from topicdyn.report import fmt

    out = []
    for name, d in data.items():
        v = [c for c in d["claims"] if c["verdict"] not in ("reported", "not applicable")]
        bad = [f"{c['claim']} ({c['verdict']})" for c in v if c["verdict"] != "pass"]
        out.append(f"- **{name}**: {len(v) - len(bad)}/{len(v)} claims pass"
                   + (f"; not passing: {'; '.join(bad)}" if bad else "") + ".")
    for name, d in data.items():
        la = d["last"]
        if d["cfg"].model.attention != "trained" or "attention/ratio_all" not in la:
            continue
        c, r = mean_sd(la["attention/ratio_all"])[0], mean_sd(la["attention/ref_ratio_all"])[0]
        if abs(r - 1) > 1e-3 and (c - 1) / (r - 1) > 0:
            out.append(f"- {name}: same-topic attention ratio (P1 pooling) {c:.3g} with correct "
                       f"labels vs {r:.3g} with the reference labelling (excess over 1, "
                       f"correct / reference: {(c - 1) / (r - 1):.2g}).")
        else:
            out.append(f"- {name}: same-topic attention ratio (P1 pooling) {c:.3g} with correct "
                       f"labels vs {r:.3g} with the reference labelling.")
    for name in [n for _, n in sorted(INIT_RUNS.items()) if n in data]:
        t = data[name]["t50"]
        if "WV" in t and "QK" in t:
            lag = np.asarray(t["QK"]) - np.asarray(t["WV"])
            out.append(f"- {name} (init {data[name]['cfg'].model.init_scale:g}): t50(W^V) = "
                       f"{pm(t['WV'])}, t50(W^Q W^K^T) = {pm(t['QK'])}, lag {pm(lag)} steps.")
    for base, abl in (("A", "A-keep0"), ("F", "F-keep0")):
        if base in data and abl in data:
            b, a = data[base]["last"], data[abl]["last"]
            out.append(f"- keep probability 0.1 -> 0 ({base} -> {abl}): ratio_all "
                       f"{pm(b['attention/ratio_all'])} -> {pm(a['attention/ratio_all'])}, "
                       f"identical-word attention {pm(b['attention/same_token'])} -> "
                       f"{pm(a['attention/same_token'])}, score gap "
                       f"{pm(b['blocks/score_gap'])} -> {pm(a['blocks/score_gap'])}.")
            at_b = data[base]["theory"].get("attention")
            at_a = data[abl]["theory"].get("attention")
            if at_b and at_a:
                out.append(f"  Theory ({base}): attention can lower the loss below uniform "
                           f"attention by {fmt(at_b['uniform_eval'] - at_b['plateau_eval'])} "
                           f"nats with keep 0.1 and by "
                           f"{fmt(at_a['uniform_eval'] - at_a['plateau_eval'])} with keep 0.")
    return out


def architecture_section(data: dict) -> list[str]:
    """Preset F vs the authors' frozen set on our model and on theirs (the reference variant)."""
    from topicdyn.report import fmt
    from topicdyn.training import trainable_groups

    if not all(n in data for n in ARCH_RUNS):
        return []
    L = ["## The authors' architecture vs preset F", "",
         "The authors' code reports same-topic attention about 3x cross-topic with correct labels; "
         "preset F measures the opposite for same-topic *other* words. Three runs with the same "
         "data, optimiser and steps, differing only in the model, separate the two "
         "candidate causes: which matrices train, and the BERT details of the authors' "
         "architecture. Attention and loss are probe values on the run's fixed evaluation "
         "documents; mean ± sd over seeds at the last checkpoint (the authors' architecture has "
         "fewer seeds: only the generic, slower path is exact for it).", "",
         "| run | seeds | trained groups | ratio: same-topic other words / cross (correct "
         "labels) | ratio_all (P1 pooling) | identical-word attention | eval loss | excess over "
         "the Bayes floor |", "|---|---|---|---|---|---|---|---|"]
    means = {}
    for name in ARCH_RUNS:
        d = data[name]
        la = d["last"]
        means[name] = mean_sd(la["attention/ratio"])[0]
        excess = np.asarray(la["loss/eval_loss"]) - np.asarray(la["loss/bayes_loss"])
        L.append(f"| {name} | {d['cfg'].train.n_seeds} | "
                 f"{', '.join(sorted(trainable_groups(d['cfg'])))} | "
                 f"{pm(la['attention/ratio'])} | {pm(la['attention/ratio_all'])} | "
                 f"{pm(la['attention/same_token'])} | {pm(la['loss/eval_loss'])} | "
                 f"{pm(excess)} |")
    rF, ro, rr = (means[n] for n in ARCH_RUNS)
    side = {True: "above", False: "below"}
    text = (f"Same-topic other-word attention relative to cross-topic: preset F {fmt(rF)} "
            f"({side[rF > 1]} 1), our model with the authors' frozen set {fmt(ro)} "
            f"({side[ro > 1]}), the authors' architecture {fmt(rr)} ({side[rr > 1]}). ")
    if (ro > 1) == (rr > 1) != (rF > 1):
        text += ("Both architectures agree with each other and differ from F: **which matrices "
                 "train decides the sign**; the BERT details (embedding LayerNorm, biases, token "
                 f"type, PyTorch init) change only its size ({fmt(rr)} vs {fmt(ro)}).")
    elif (ro > 1) != (rr > 1):
        text += ("Under the same frozen set the two architectures disagree: the BERT details "
                 "decide the sign.")
    else:
        text += ("All three agree in sign: neither the frozen set nor the architecture decides "
                 "it in this run.")
    return L + ["", text, ""]


def rel(path: Path, root: Path) -> str:
    """A path relative to the project root when inside it."""
    try:
        return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return str(path)


# ---- cross-run figures ----------------------------------------------------------------------
def plot_labelling(data: dict, out: Path) -> Path:
    """Bars: attention ratios with correct labels vs the reference code's labelling."""
    from topicdyn.plots.common import new_figure, save

    names = [n for n, d in data.items() if "attention/ratio_all" in d["last"]]
    fig = new_figure(max(6.5, 1.5 * len(names) + 2), 4.0)
    axes = fig.subplots(1, 2)
    x = np.arange(len(names))
    for ax, (key, title) in zip(axes, (
            ("ratio_all", "identical words pooled into same-topic (P1's statistic)"),
            ("ratio", "other words only"))):
        for off, tag, label, color in ((-0.2, "", "correct labels", "tab:blue"),
                                       (0.2, "ref_", "reference code's labelling", "tab:gray")):
            vals = [mean_sd(data[n]["last"][f"attention/{tag}{key}"]) for n in names]
            ax.bar(x + off, [v[0] for v in vals], 0.4, yerr=[v[1] for v in vals],
                   label=label, color=color, capsize=3)
        ax.axhline(1, color="black", lw=0.8, ls="--", label="no topic bias (1)")
        ax.set_xticks(x)
        ax.set_xticklabels(names, fontsize=8)
        ax.set_ylabel("same-topic / cross-topic attention per key", fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle("Attention topic bias at the last checkpoint: correct labels vs the reference "
                 "code's (off by the 4 specials)\nmean over seeds, bars: sd", fontsize=10)
    return save(fig, out)


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
def write_results(data: dict, results: Path, out_root: Path, meta: dict,
                  root: Path | None = None) -> None:
    """Write results/REPORT.md, summary.json and figures/; run paths are shown relative to
    root (default: the current directory, the project root)."""
    from topicdyn.plots import plot_two_stage
    from topicdyn.report import fmt

    root = Path.cwd() if root is None else root
    fig_dir = results / "figures"
    shutil.rmtree(fig_dir, ignore_errors=True)
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
    plot_labelling(data, tmp / "attention_labelling.png")
    small_png(tmp / "attention_labelling.png", fig_dir / "attention_labelling.png")

    n = meta["seeds"]
    L = ["# Reproducing Li, Li & Risteski (ICML 2023) with topicdyn", "",
         f"Generated by `{meta['command']}` on {meta['date']} (code {meta['git']}); "
         f"{meta['machine']}. {len(data)} experiments, {meta['steps']} steps each, {n} seeds per "
         f"experiment (fewer where an experiment says so) trained together under vmap; total wall time {meta['wall_min']:.1f} min. "
         "Reference defaults: T=10 topics x v=10 words, alpha=0.1, N in [100, 150] with START/"
         "END, batch 40, Adam lr 0.01, masking 0.15 with MASK/random/keep 0.8/0.1/0.1, masked "
         "positions removed from the keys. Theory is computed for each experiment's exact "
         "config (`theory.json`); losses are compared on the probes' 80 fixed evaluation "
         "documents. Measured values are mean ± sd over seeds at the last checkpoint.", ""]
    # overview
    L += ["## Overview", "", "| experiment | pass | fail | not yet converged | eval loss | "
          "predicted plateau (uniform attention / regime-A optimum) | Bayes floor |",
          "|---|---|---|---|---|---|---|"]
    for name, d in data.items():
        v = [c["verdict"] for c in d["claims"]]
        th = d["theory"]
        plateau = (th.get("uniform_attention") or {}).get("plateau_eval")
        a_opt = (th.get("attention") or {}).get("plateau_eval")
        pred = " / ".join(fmt(x) for x in (plateau, a_opt) if x is not None) or "-"
        bayes = pm(d["last"]["loss/bayes_loss"]) if d["cfg"].model.loss == "ce" and \
            "loss/bayes_loss" in d["last"] else "-"
        L.append(f"| [{name}](#{name.lower().replace('.', '')}) | {v.count('pass')} | "
                 f"{v.count('fail')} | {v.count('not yet converged')} | "
                 f"{pm(d['last']['loss/eval_loss'])} | {pred} | {bayes} |")
    L += ["", "The last claim of each table, *excess loss over the Bayes floor*, is a distance "
          "(verdict 'reported', not counted above); its 'prediction' column holds the floor "
          "itself.", ""]
    L += ["## Key numbers", ""] + key_numbers(data) + [""]
    # attention labelling
    L += ["## Attention statistic: correct labels vs the reference code's labelling", "",
          "P1's code looks topics up by vocabulary id instead of word index (off by its 4 special "
          "tokens, BRIEF §5). `attention/ratio_all` pools identical words into the same-topic "
          "group as P1's statistic does; `ratio` counts other words only. The reference columns "
          "apply the reference labelling to the same attention weights.", "",
          "| experiment | ratio_all, correct | ratio_all, reference labels | ratio, correct | "
          "ratio, reference labels | identical word | same topic, other word | other topic |",
          "|---|---|---|---|---|---|---|---|"]
    for name, d in data.items():
        la = d["last"]
        if "attention/ratio_all" not in la or d["cfg"].model.attention != "trained":
            continue
        L.append(f"| {name} | {pm(la['attention/ratio_all'])} | "
                 f"{pm(la['attention/ref_ratio_all'])} | {pm(la['attention/ratio'])} | "
                 f"{pm(la['attention/ref_ratio'])} | {pm(la['attention/same_token'])} | "
                 f"{pm(la['attention/same_topic'])} | {pm(la['attention/cross_topic'])} |")
    L += ["", "The last three columns are attention to one key of each category times the "
          "number of keys (uniform attention = 1), correct labels.", "",
          "![attention labelling](figures/attention_labelling.png)", ""]
    L += architecture_section(data)
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
    # keep-0 ablation
    pairs = [(a, b) for a, b in (("A", "A-keep0"), ("F", "F-keep0")) if a in data and b in data]
    if pairs:
        L += ["## Ablation: keep probability 0", "",
              "With p_keep = 0 a selected position never shows its own word, so the word a "
              "query shows carries no information about its target (it is unselected, or a "
              "random replacement); with p_keep = 0.1 a shown word may be the target itself. "
              "The regime-A theory is recomputed for each masking.", "",
              "| experiment | p_keep | predicted score gap (A optimum) | measured score gap | "
              "predicted loss gain of attention (uniform - optimum) | measured loss | "
              "ratio_all | ratio (other words) | identical-word attention |",
              "|---|---|---|---|---|---|---|---|---|"]
        for pair in pairs:
            for name in pair:
                d = data[name]
                at = d["theory"].get("attention") or {}
                gain = (at["uniform_eval"] - at["plateau_eval"]) if at else None
                gap = (f"{at['score_gap']:.3g} ± {at['score_gap_se']:.2g} (s.e.)" if at else "-")
                la = d["last"]
                L.append(f"| {name} | {d['cfg'].mask.p_keep:g} | {gap} | "
                         f"{pm(la['blocks/score_gap'])} | {fmt(gain)} | "
                         f"{pm(la['loss/eval_loss'])} | {pm(la['attention/ratio_all'])} | "
                         f"{pm(la['attention/ratio'])} | {pm(la['attention/same_token'])} |")
        L += [""]
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
| `figures/two_stage_init_scale.png`, `figures/attention_labelling.png` | the same run (cross-experiment figures) |

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
