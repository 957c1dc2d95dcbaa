"""`python scripts/real_text.py [--reuse-only] [--out-dir DIR] [--steps N] [--seeds N]`: train
the real-text runs (reused when finished, resumed when interrupted), then write
results/REAL_TEXT.md and its figures."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from topicdyn.realtext.runs import RUNS_DIR, Settings


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="real_text.py", description=__doc__)
    ap.add_argument("--out-dir", default="results",
                    help="where REAL_TEXT.md and figures/real_text/ go")
    ap.add_argument("--runs-dir", default=str(RUNS_DIR), help="the runs' parent directory")
    ap.add_argument("--reuse-only", action="store_true", help="no training: report on the "
                    "finished runs")
    d = Settings()
    ap.add_argument("--steps", type=int, default=d.steps)
    ap.add_argument("--seeds", type=int, default=d.seeds)
    ap.add_argument("--vocab", type=int, default=d.vocab)
    ap.add_argument("--models", default=",".join(d.models),
                    help="which of E, A, F, R (the BERT-style variant) to train")
    ap.add_argument("--topic-numbers", default=",".join(map(str, d.topic_numbers)),
                    help="the numbers of topics compared for the choice of T")
    ap.add_argument("--floor-batches", type=int, default=d.floor_batches,
                    help="batches of the twin's Bayes floor estimate")
    ap.add_argument("--no-run-figures", action="store_true",
                    help="no figures and report.md in each run directory (the report's own "
                         "figures are drawn)")
    ap.add_argument("--no-timing", action="store_true",
                    help="skip the kernel timing (lean vs the definition at this vocabulary)")
    args = ap.parse_args(argv)
    from topicdyn.process import enable_compilation_cache
    enable_compilation_cache()  # compiled programs shared with earlier runs (results unchanged)
    from topicdyn.config import ConfigError

    try:
        models = tuple(m for m in args.models.split(",") if m)
        numbers = tuple(int(x) for x in args.topic_numbers.split(",") if x)
        bad = sorted(set(models) - set(d.models))
        if bad or not models or not numbers or min(numbers) < 1:
            raise ValueError(f"unknown {bad[0]}" if bad else "empty or < 1")
    except ValueError as e:
        print(f"real_text: --models takes names from {','.join(d.models)} and --topic-numbers "
              f"integers >= 1, comma-separated ({e})")
        return 2
    s = Settings(vocab=args.vocab, steps=args.steps, seeds=args.seeds,
                 seeds_reference=min(args.seeds, d.seeds_reference), models=models,
                 topic_numbers=numbers, floor_batches=args.floor_batches,
                 run_figures=not args.no_run_figures)
    runs_dir, out = Path(args.runs_dir), Path(args.out_dir)
    t0 = time.perf_counter()
    try:
        from topicdyn.config import preset
        from topicdyn.corpus.lda import corpus_lda, topic_number_table, topic_summary
        from topicdyn.corpus.text import load_corpus

        data = preset("E", s.corpus_overrides()).data
        corpus, fit = load_corpus(data), corpus_lda(data)
    except ConfigError as e:
        print(f"real_text: {e}")
        return 2
    table_path = runs_dir / "topic_numbers.json"
    if table_path.exists():
        table = json.loads(table_path.read_text())
    else:
        print("fitting LDA at several numbers of topics (the choice of T) ...", flush=True)
        table = topic_number_table(data, s.topic_numbers)
        runs_dir.mkdir(parents=True, exist_ok=True)
        table_path.write_text(json.dumps(table, indent=1) + "\n")
    speed_path = runs_dir / "kernel_speed.json"
    if not args.reuse_only and not speed_path.exists() and not args.no_timing:
        from topicdyn.realtext.runs import kernel_speed
        print("timing the kernels at this vocabulary (one seed each) ...", flush=True)
        speed_path.write_text(json.dumps(kernel_speed(s), indent=1) + "\n")
    speed = json.loads(speed_path.read_text()) if speed_path.exists() else []
    sec_path = runs_dir / "seconds.json"  # each run's wall time when it was trained
    seconds = json.loads(sec_path.read_text()) if sec_path.exists() else {}
    if not args.reuse_only:
        from topicdyn.realtext.runs import train_all
        seconds.update(train_all(s, runs_dir))
        sec_path.write_text(json.dumps(seconds, indent=1) + "\n")
    print(f"this invocation: {time.perf_counter() - t0:.0f} s", flush=True)
    total = sum(seconds.values()) or None
    from topicdyn.realtext.figures import loss_figure, stat_figure
    from topicdyn.realtext.report import corpus_section, discussion, write_report
    from topicdyn.realtext.runs import load_runs

    runs = load_runs(s, runs_dir)
    if not runs:
        print(f"real_text: no finished runs in {runs_dir}; run without --reuse-only")
        return 2
    fig_dir = out / "figures" / "real_text"
    figs = [stat_figure(runs, "blocks/gram_gap", "permuted/gram_gap",
                        "same - cross mean entry of row-centred E E^T",
                        "Embedding Gram: same-topic minus cross-topic (LDA labels)",
                        fig_dir / "gram_gap.png", hline=0.0,
                        trained=lambda c: c.model.embedding == "trained"),
            stat_figure(runs, "attention/ratio", "permuted/attn_ratio",
                        "same-topic / cross-topic attention",
                        "Attention to same-topic other words over cross-topic words "
                        "(LDA labels; 1 = no preference)", fig_dir / "attention_ratio.png",
                        hline=1.0, trained=lambda c: c.model.attention == "trained"),
            loss_figure(runs, fig_dir / "loss.png")]
    from topicdyn.reproduce.results import small_png
    figs = [f for f in figs if f is not None]
    for f in figs:  # committed results: 256-colour palette PNGs
        small_png(f, f)
    lines = corpus_section(s, corpus, data.label_threshold, topic_summary(data), table)
    path = write_report(out / "REAL_TEXT.md", s, runs, lines,
                        [str(Path(f).relative_to(out)) for f in figs], seconds, total,
                        discussion(runs), speed)
    print(f"wrote {path} ({len(figs)} figures)")
    return 0
