"""Sections of results/REPORT.md that compare experiments (tables and text from their runs).

Every loss is a population estimate with its s.e. unless labelled "eval set"; every floor is
named (`bayes/query`, `bayes/visible`) and the one the model class can reach is marked.
"""
from __future__ import annotations

import numpy as np

from topicdyn.reproduce.experiments import ARCH_RUNS, INIT_RUNS
from topicdyn.verdicts import mean_sd


def pm(vals, digits: int = 4) -> str:
    """mean ± sd over seeds (the mean alone for one seed)."""
    m, s = mean_sd(vals)
    return f"{m:.{digits}g} ± {s:.2g}" if np.asarray(vals).size > 1 else f"{m:.{digits}g}"


def pop(la: dict) -> str:
    """Population loss: mean ± sd over seeds (s.e. of the estimate)."""
    if "loss/pop_loss" not in la:
        return "-"
    return f"{pm(la['loss/pop_loss'])} (s.e. {np.mean(la['loss/pop_loss_se']):.1g})"


def val_se(x, se) -> str:
    from topicdyn.report import fmt
    return "-" if x is None else f"{fmt(x)} ± {fmt(se, 1)}"


def floors(theory: dict) -> tuple[str, str]:
    """(reachable floor, the other floor) as 'name value ± se' strings."""
    fl, reach = theory.get("floors") or {}, (theory.get("reachable_floor") or {}).get("name")
    if not fl:
        return "-", "-"
    text = {n: f"`{n}` {val_se(f['loss'], f['stderr'])}" for n, f in fl.items()}
    others = [t for n, t in text.items() if n != reach]
    return text.get(reach, "-"), "; ".join(others) or "-"


def overview(data: dict) -> list[str]:
    L = ["## Overview", "",
         "Counts of verdicts; the model's population loss (mean ± sd over seeds; s.e. of the "
         "estimate) against the predicted plateaus (population value ± Monte Carlo s.e.) and "
         "the Bayes floors: the one this model class can reach first, named. The eval-set "
         "columns are the same comparison on the fixed evaluation documents (paired, so "
         "document sampling cancels between them, but neither is a population value).", "",
         "| experiment | pass | fail | not yet converged | not decidable | population loss | "
         "predicted plateau (uniform attention / regime-A optimum) | reachable floor | other "
         "floor | eval-set loss | eval-set plateau |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    from topicdyn.report import fmt
    for name, d in data.items():
        v = [c["verdict"] for c in d["claims"]]
        th = d["theory"]
        ua, at = th.get("uniform_attention") or {}, th.get("attention") or {}
        pred = " / ".join(val_se(s["plateau"], s["plateau_se"]) for s in (ua, at) if s) or "-"
        ev = " / ".join(fmt(s["plateau_eval"]) for s in (ua, at) if s) or "-"
        reach, other = floors(th) if d["cfg"].model.loss == "ce" else ("-", "-")
        L.append(f"| [{name}](#{name.lower().replace('.', '')}) | {v.count('pass')} | "
                 f"{v.count('fail')} | {v.count('not yet converged')} | "
                 f"{v.count('not decidable here')} | {pop(d['last'])} | {pred} | {reach} | "
                 f"{other} | {pm(d['last']['loss/eval_loss'])} | {ev} |")
    L += ["", "`bayes/query`: the posterior predictive given the visible words and the token "
          "shown at the query position (the target itself in the keep case); `bayes/visible`: "
          "given the visible words only. A model whose output ignores the shown token (E, V: "
          "uniform attention with the selected positions removed from the keys) can reach "
          "only `bayes/visible`. The last claim of each table, *excess loss over the Bayes "
          "floor*, is a distance to the reachable floor (verdict 'reported', not counted).", ""]
    return L


def _bug_effect(ours_correct: float, theirs: float) -> str:
    """How the authors' labelling changes their statistic, by the sign of the bias."""
    a, b = ours_correct - 1.0, theirs - 1.0
    if abs(a) < 1e-2:
        return "has no bias to change (none with correct labels)"
    if a * b < 0:
        return f"reverses the sign of the bias ({b:+.3g} vs {a:+.3g} over 1)"
    side = "same-topic words get more attention" if a > 0 else \
        "same-topic words get less attention than other-topic words"
    moved = "understates it (closer to 1)" if abs(b) < abs(a) else "overstates it (further from 1)"
    return f"{moved}: {b:+.3g} vs {a:+.3g} over 1, where {side}"


def labelling(data: dict) -> list[str]:
    L = ["## Attention statistic: the authors' labelling vs correct labels", "",
         "The authors' statistic (their `compare_topic_and_non_topic_attention`, emulated "
         "exactly on our evaluation documents: unmasked documents START + words, cut to 100 "
         "tokens, every position a query and a key, identical tokens in their own group, "
         "topics looked up by vocabulary id in the word -> topic table, which is off by the 4 "
         "special tokens: 40% of the words get another topic or none, START counts as a "
         "topic-0 word) is topic / non-topic attention. The same protocol with correct labels "
         "isolates the labelling bug; its effect is given by sign. Our own statistics "
         "(masked evaluation documents, queries on content words, correct labels): "
         "`ratio_all` pools identical words into same-topic, `ratio` counts other words only.",
         "", "| experiment | authors' statistic, their labels | authors' statistic, correct "
         "labels | effect of their labelling | ratio_all (ours) | ratio (ours) | identical "
         "word | same topic, other word | other topic |", "|---|---|---|---|---|---|---|---|---|"]
    for name, d in data.items():
        la = d["last"]
        if "attention/ref_ratio" not in la or d["cfg"].model.attention != "trained":
            continue
        effect = _bug_effect(mean_sd(la["attention/ref_ratio_fixed"])[0],
                             mean_sd(la["attention/ref_ratio"])[0])
        L.append(f"| {name} | {pm(la['attention/ref_ratio'])} | "
                 f"{pm(la['attention/ref_ratio_fixed'])} | {effect} | "
                 f"{pm(la['attention/ratio_all'])} | {pm(la['attention/ratio'])} | "
                 f"{pm(la['attention/same_token'])} | {pm(la['attention/same_topic'])} | "
                 f"{pm(la['attention/cross_topic'])} |")
    L += ["", "The effect of their labelling compares the excess over 1 of their statistic with "
          "their labels and with correct labels, whatever the sign of the bias: 'understates' "
          "when theirs is closer to 1, 'overstates' when it is further. Where identical words "
          "get much attention (F: the copy of a kept word), our `ratio_all` is far above 1 "
          "while the statistics without identical words are below 1.", "", "The last three columns are attention to one key of each category times the "
          "number of keys (uniform attention = 1), correct labels, eval set.", "",
          "![attention labelling](figures/attention_labelling.png)", ""]
    return L


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
        if d["cfg"].model.attention != "trained" or "attention/ref_ratio" not in la:
            continue
        r, f = mean_sd(la["attention/ref_ratio"])[0], mean_sd(la["attention/ref_ratio_fixed"])[0]
        out.append(f"- {name}: the authors' attention statistic reads {r:.3g} with their "
                   f"labelling and {f:.3g} with correct labels: their labelling "
                   f"{_bug_effect(f, r)}.")
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
                out.append(f"  Theory ({base}, population): attention can lower the loss below "
                           f"uniform attention by {fmt(at_b['uniform_loss'] - at_b['plateau'])} "
                           f"nats with keep 0.1 and by "
                           f"{fmt(at_a['uniform_loss'] - at_a['plateau'])} with keep 0.")
    return out


def keep0(data: dict) -> list[str]:
    from topicdyn.report import fmt

    pairs = [(a, b) for a, b in (("A", "A-keep0"), ("F", "F-keep0")) if a in data and b in data]
    if not pairs:
        return []
    L = ["## Ablation: keep probability 0", "",
         "With p_keep = 0 a selected position never shows its own word, so the word a "
         "query shows carries no information about its target (it is unselected, or a "
         "random replacement); with p_keep = 0.1 a shown word may be the target itself. "
         "The regime-A theory is recomputed for each masking (population values; the loss "
         "gain is uniform attention minus the optimum on the same theory sample).", "",
         "| experiment | p_keep | predicted score gap (A optimum, s.e.) | loss flat along the "
         "gap | measured score gap | predicted loss gain of attention | population loss | "
         "ratio_all | ratio (other words) | identical-word attention |",
         "|---|---|---|---|---|---|---|---|---|---|"]
    for pair in pairs:
        for name in pair:
            d = data[name]
            at = d["theory"].get("attention") or {}
            gain = (at["uniform_loss"] - at["plateau"]) if at else None
            gap = f"{at['score_gap']:.3g} ± {at['score_gap_se']:.2g}" if at else "-"
            flat = "-"
            if at.get("gap_profile"):
                gp = at["gap_profile"]
                flat = ("yes" if gp["flat"] else "no") + \
                    f" (x1/2: {gp['rise_low']:+.1e}, x2: {gp['rise_high']:+.1e} nats)"
            la = d["last"]
            L.append(f"| {name} | {d['cfg'].mask.p_keep:g} | {gap} | {flat} | "
                     f"{pm(la['blocks/score_gap'])} | {fmt(gain)} | {pop(la)} | "
                     f"{pm(la['attention/ratio_all'])} | {pm(la['attention/ratio'])} | "
                     f"{pm(la['attention/same_token'])} |")
    return L + [""]


def architecture(data: dict) -> list[str]:
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
         "architecture. Attention values are on the run's fixed evaluation documents, losses "
         "are population estimates; mean ± sd over seeds at the last checkpoint (the authors' "
         "architecture has fewer seeds: only the generic, slower path is exact for it).", "",
         "| run | seeds | trained groups | ratio: same-topic other words / cross (correct "
         "labels) | ratio_all (P1 pooling) | identical-word attention | population loss | "
         "excess over the reachable floor |", "|---|---|---|---|---|---|---|---|"]
    means = {}
    for name in ARCH_RUNS:
        d = data[name]
        la, th = d["last"], d["theory"]
        means[name] = mean_sd(la["attention/ratio"])[0]
        excess = "-"
        if "loss/pop_loss" in la and th.get("reachable_floor"):
            fname = th["reachable_floor"]["name"]
            excess = pm(np.asarray(la["loss/pop_loss"]) - th["floors"][fname]["loss"]) + \
                f" (`{fname}`)"
        L.append(f"| {name} | {d['cfg'].train.n_seeds} | "
                 f"{', '.join(sorted(trainable_groups(d['cfg'])))} | "
                 f"{pm(la['attention/ratio'])} | {pm(la['attention/ratio_all'])} | "
                 f"{pm(la['attention/same_token'])} | {pop(la)} | {excess} |")
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


def plot_labelling(data: dict, out):
    """The authors' statistic with their labelling and with correct labels, and ours, per
    experiment: seed mean (min..max bar) on a log axis, where a ratio below 1 (less attention
    to same-topic keys, F's finding) is as visible as one far above it (A's)."""
    from topicdyn.plots.common import log_y, new_figure, save

    names = [n for n, d in data.items() if "attention/ref_ratio" in d["last"]
             and d["cfg"].model.attention == "trained"]
    fig = new_figure(max(6.5, 1.2 * len(names) + 2), 4.4)
    ax = fig.subplots(1, 1)
    x = np.arange(len(names))
    for off, key, label, color, mk in (
            (-0.22, "ref_ratio", "authors' statistic, their labelling", "tab:gray", "s"),
            (0.0, "ref_ratio_fixed", "authors' statistic, correct labels", "tab:purple", "D"),
            (0.22, "ratio", "ours: other words only, correct labels", "tab:blue", "o")):
        vals = [np.asarray(data[n]["last"][f"attention/{key}"], float) for n in names]
        mean = np.array([v.mean() for v in vals])
        lo, hi = [mean - np.array([v.min() for v in vals]),
                  np.array([v.max() for v in vals]) - mean]
        ax.errorbar(x + off, mean, yerr=[lo, hi], fmt=mk, color=color, label=label, capsize=3,
                    ms=6, mec="black", lw=1.2)
    ax.axhline(1, color="black", lw=1.0, ls="--", label="uniform attention: no topic bias (1)")
    log_y(ax)
    lo, hi = ax.get_ylim()
    ax.axhspan(lo, 1, color="tab:blue", alpha=0.06, lw=0)
    ax.set_ylim(lo, hi)
    ax.text(0.01, 0.02, "below 1: less attention to same-topic keys", transform=ax.transAxes,
            fontsize=7, color="tab:blue")
    ax.set_xticks(x)
    ax.set_xticklabels(names, fontsize=8)
    ax.set_ylabel("topic / non-topic attention (log scale)", fontsize=8)
    ax.grid(True, axis="y", which="both", alpha=0.25)
    ax.legend(fontsize=7, loc="upper right")
    fig.suptitle("Attention topic bias at the last checkpoint: the authors' statistic with "
                 "their labelling (off by the 4 specials) and with correct labels\nseed mean, "
                 "bars min..max over seeds", fontsize=10)
    return save(fig, out)
