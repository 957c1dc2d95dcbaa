"""results/REAL_TEXT.md: the corpus and its topics, the number of topics, the paper's Wikipedia
statistics against shuffled labels on the corpus and on its LDA-fitted twin, losses, speed."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from topicdyn.realtext.runs import MODEL_TEXT, Settings, TextRun

CLAIMS = ("embedding Gram beyond shuffled labels", "attention beyond shuffled labels")


def _f(x, nd: int = 3) -> str:
    return "-" if x is None or not np.isfinite(x) else f"{x:.{nd}f}"


def _ms(v, nd: int = 3) -> str:
    """mean ± sd over seeds."""
    if v is None:
        return "-"
    v = np.asarray(v, float)
    return f"{v.mean():.{nd}f} ± {v.std(ddof=1) if v.size > 1 else 0.0:.{nd}f}"


MIN_WORDS = MIN_ARTICLES = 10  # what a topic needs for its same-topic statistics to mean much


def rule_choice(table: list[dict]) -> int | None:
    """The largest T of the table at which every topic labels >= MIN_WORDS words and dominates
    >= MIN_ARTICLES training articles (None if no T does)."""
    ok = [r["T"] for r in table if r["min_words"] >= MIN_WORDS and
          r["min_articles"] >= MIN_ARTICLES]
    return max(ok) if ok else None


def corpus_section(s: Settings, corpus, threshold: float, topics: list[dict],
                   table: list[dict]) -> list[str]:
    kept = corpus.counts.sum()
    n_tr, n_he = len(corpus.articles_train), len(corpus.articles_heldout)
    out = ["## The corpus", "",
           f"The Wikipedia sample gensim ships (`gensim/test/test_data/head500.noblanks.cor`: "
           f"{n_tr + n_he} articles, stemmed, stop words removed), found through the installed "
           f"package. {n_he} articles are held out (the evaluation set and the population "
           f"loss: windows of held-out articles only). Vocabulary: the {s.vocab} most frequent "
           f"of the {corpus.n_types} word types of the {n_tr} training articles; other words "
           f"are dropped (`data.oov=drop`), keeping {kept} training tokens. Training batches "
           "are windows of 100-150 consecutive kept tokens inside one article, drawn in the "
           "jitted step from (seed, step), with the paper's MLM corruption.", "",
           "## Topic labels and the number of topics", "",
           "An LDA (gensim `LdaModel`, symmetric alpha = 1/T, 10 passes, random state 0) is "
           "fitted to the training articles' bags of words. A word's label is its most probable "
           f"topic where P(topic | word) >= {threshold:g}; other words are left out of "
           "every topic statistic. The paper used 100 topics on a full Wikipedia dump; 225 "
           "articles cannot support that many. What T does to the labels (fits with random "
           "states 0, 1, 2):", "",
           "| T | labelled words | fewest labelled words of a topic | median | fewest "
           "articles a topic dominates | stability (ARI of the labels, state 0 vs 1, 2) |",
           "|---|---|---|---|---|---|"]
    for r in table:
        out.append(f"| {r['T']} | {r['labelled']} | {r['min_words']} | {r['median_words']:g} | "
                   f"{r['min_articles']} | {', '.join(f'{x:.2f}' for x in r['stability_ari'])} |")
    best = rule_choice(table)
    why = (f"the largest T of the table at which every topic labels at least {MIN_WORDS} words "
           f"and dominates at least {MIN_ARTICLES} training articles (with fewer, a topic's "
           "same-topic pairs are too few to measure attention on), and the paper's synthetic "
           "T, so that the twin is comparable with the synthetic experiments"
           if best == s.topics else
           f"set by hand; the rule (every topic >= {MIN_WORDS} labelled words and >= "
           f"{MIN_ARTICLES} dominated articles) would pick {best}")
    out += ["", f"**T = {s.topics}** (`data.T`, also the default): {why}. The labels are only "
            "moderately stable across LDA random states (ARI above): every statistic below "
            "uses the fit of random state 0, cached in each run directory (`lda/`, with the "
            "gensim version).", "",
            f"The fitted topics (token share, labelled words, most probable words):", "",
            "| topic | share | labelled | top words |", "|---|---|---|---|"]
    for t in topics:
        out.append(f"| {t['topic']} | {t['share']:.3f} | {t['labelled']} | "
                   f"{' '.join(t['top_words'])} |")
    return out + [""]


def claims_table(runs: list[TextRun]) -> list[str]:
    out = ["## Same-topic vs cross-topic, against shuffled labels", "",
           "At the last checkpoint; seed mean ± sd. `gap`: mean same-topic minus mean "
           "cross-topic entry of the row-centred embedding Gram E E^T over the labelled words; "
           "`ratio`: normalised attention to same-topic other words over cross-topic words (1 = "
           "no preference), on the evaluation windows. `shuffled`: the same statistic with the "
           "labels permuted among the labelled words (8 permutations, topic sizes kept): mean "
           "± sd. A check passes when every seed exceeds its shuffled mean by 3 shuffled sd "
           "(topicdyn/claims/text.py). The twin uses the same labels.", "",
           "| model | data | Gram gap | shuffled | verdict | attention ratio | shuffled | "
           "verdict |", "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        cells = []
        for key, null, claim in (("blocks/gram_gap", "permuted/gram_gap", CLAIMS[0]),
                                 ("attention/ratio", "permuted/attn_ratio", CLAIMS[1])):
            v = r.verdicts.get(claim)
            if v is None or v["verdict"] == "not applicable":
                cells += ["-", "-", "n.a."]
                continue
            mu, sd = r.last(f"{null}_perm_mean"), r.last(f"{null}_perm_sd")
            cells += [_ms(r.last(key)), f"{mu.mean():.3f} ± {sd.mean():.3f}",
                      v["verdict"] if v["verdict"] != "fail" else "**fail**"]
        out.append(f"| {MODEL_TEXT[r.model]} | {r.source} | " + " | ".join(cells) + " |")
    return out + [""]


def loss_table(runs: list[TextRun]) -> list[str]:
    out = ["## Losses", "",
           "Population loss at the last checkpoint (seed mean ± sd; Monte Carlo s.e. in "
           "brackets): on the corpus, windows of the held-out articles; on the twin, fresh "
           "documents of the twin generator. The twin has Bayes floors (importance sampling "
           "over its fitted topic-word matrix; s.e. from the floor batches); the corpus has no "
           "generator and so no floor.", "",
           "| model | data | population loss | drop over the last third | twin bayes/visible | "
           "twin bayes/query |", "|---|---|---|---|---|---|"]
    for r in runs:
        s = r.series("loss/pop_loss")
        if s is None:
            continue
        se = r.last("loss/pop_loss_se")
        third = int(np.argmin(np.abs(s[0] - s[0][-1] * 2 / 3)))
        drop = s[1][third].mean() - s[1][-1].mean()
        fl = r.theory.get("floors") or {}

        def floor(n):
            return f"{fl[n]['loss']:.3f} ({fl[n]['stderr']:.3f})" if n in fl else "-"
        out.append(f"| {MODEL_TEXT[r.model]} | {r.source} | {_ms(s[1][-1])} ({se.mean():.3f}) "
                   f"| {drop:.3f} (steps {s[0][third]}-{s[0][-1]}) | {floor('bayes/visible')} "
                   f"| {floor('bayes/query')} |")
    return out + [""]


def speed_table(runs: list[TextRun], seconds: dict) -> list[str]:
    out = ["## Speed at this vocabulary", "",
           "Training steps/s (median over the logging windows of the second half; the whole "
           "ensemble of seeds per step, probes running beside training on the same 2 cores) and "
           "the implementation that trained (config.json `implementation`).", "",
           "| run | seeds | width | implementation | steps/s | wall time (s) |",
           "|---|---|---|---|---|---|"]
    import json
    for r in runs:
        impl = json.loads((r.dir / "config.json").read_text()).get("implementation", {})
        out.append(f"| {r.name} | {r.cfg.train.n_seeds} | {r.cfg.d_model} | "
                   f"{impl.get('train_loss', '?')} | {_f(r.steps_per_s(), 1)} | "
                   f"{_f(seconds.get(r.name), 0)} |")
    return out + [""]


def kernel_table(speed: list[dict], s: Settings) -> list[str]:
    if not speed:
        return []
    out = [f"One seed's training program at V = {s.vocab} words, through the kernel topicdyn "
           "selects and through the model's definition (`model.impl=generic`, dense over "
           "every position), each in a fresh process, compilation excluded (`python -m "
           "topicdyn.bench`'s step case; measured by this script):", "",
           "| model | width | selected | steps/s | generic steps/s | selected / generic |",
           "|---|---|---|---|---|---|"]
    for r in speed:
        a, g = r["auto"], r["generic"]
        out.append(f"| {MODEL_TEXT[r['model']]} | {a['width']} | {a['impl']} | "
                   f"{a['steps_per_s']:.1f} | {g['steps_per_s']:.1f} | "
                   f"{a['steps_per_s'] / g['steps_per_s']:.1f}x |")
    return out + [""]


def write_report(path: Path, s: Settings, runs: list[TextRun], corpus_lines: list[str],
                 figures: list[str], seconds: dict, total: float | None,
                 discussion: list[str], speed: list[dict] = ()) -> Path:
    lines = ["# Real text: the paper's Wikipedia step and its LDA-fitted twin", "",
             "Regenerate with `python scripts/real_text.py` (needs `pip install -e \".[text]\"`)"
             + (f"; its runs took {total / 60:.1f} min in all on this machine (2 CPU cores; "
                f"the LDA fits and the kernel timing add about 2 min)." if total else "."),
             "`--reuse-only` re-renders this file from the runs under runs/real_text/.", "",
             f"Models (each {s.steps} steps of Adam, lr 0.01, batch 40, {s.seeds} seeds; the "
             f"BERT-style variant {s.seeds_reference}): "
             + "; ".join(MODEL_TEXT.values()) + ". Each is trained on the corpus and (except "
             "the BERT-style variant) on the twin: synthetic documents from the LDA fitted to "
             "the corpus (`topicdyn train --twin`: `data.beta` = the fitted topic-word matrix, "
             "non-uniform and overlapping topics, Dirichlet prior with the fit's alpha, the same "
             "labels, lengths and batch size).", ""]
    lines += corpus_lines + discussion + claims_table(runs) + loss_table(runs)
    lines += speed_table(runs, seconds) + kernel_table(list(speed), s)
    lines += ["## Figures", ""] + [f"![{Path(f).stem}]({f})" for f in figures] + [""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def discussion(runs: list[TextRun]) -> list[str]:
    """Plain statements read off the runs: per model, the checks on the corpus and on the twin,
    and the loss gap between the two."""
    by = {(r.model, r.source): r for r in runs}
    out = ["## What the runs show", ""]
    for m in MODEL_TEXT:
        parts = []
        for claim, what in ((CLAIMS[0], "embedding Gram gap"), (CLAIMS[1], "attention ratio")):
            got = []
            for src in ("corpus", "twin"):
                r = by.get((m, src))
                v = r.verdicts.get(claim) if r else None
                if v is None or v["verdict"] == "not applicable" or not v.get("excess_sd"):
                    continue
                ex = np.asarray(v["excess_sd"])
                got.append(f"{'Wikipedia' if src == 'corpus' else 'twin'} {v['verdict']} "
                           f"({ex.min():.1f} to {ex.max():.1f} shuffled sd above the shuffled "
                           "mean)")
            if got:
                parts.append(f"{what}: " + "; ".join(got))
        c, t = by.get((m, "corpus")), by.get((m, "twin"))
        if c is not None and t is not None and c.last("loss/pop_loss") is not None:
            lc, lt = c.last("loss/pop_loss").mean(), t.last("loss/pop_loss").mean()
            name = (t.theory.get("reachable_floor") or {}).get("name")
            fl = (t.theory.get("floors") or {}).get(name)
            extra = (f"; the twin's floor for this model class, {name}, is {fl['loss']:.3f}, "
                     f"so the model is {lt - fl['loss']:.3f} nats above it on the twin"
                     if fl else "")
            parts.append(f"loss {lc:.3f} on held-out Wikipedia windows vs {lt:.3f} on twin "
                         f"documents{extra}")
            q = (t.theory.get("floors") or {}).get("bayes/query")
            if q is not None and lc < q["loss"] - 3 * q["stderr"]:
                parts.append(f"on Wikipedia it is {q['loss'] - lc:.3f} nats *below* the twin's "
                             "bayes/query floor, the best any model can do on documents of the "
                             "fitted LDA: the text holds structure its topic model lacks (the "
                             "windows are contiguous, so word order and local co-occurrence)")
        if parts:
            out.append(f"- **{MODEL_TEXT[m]}**: " + "; ".join(parts) + ".")
    return out + [""]
