"""`python scripts/embedding_space.py [--reuse-only] [--spec SPEC] [--out-dir DIR]`: train the
grid (a sweep: resumable, finished points are skipped), then write the report and figures."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

STATS = [  # (probe stat, its Bayes reference stat or None, constant reference, title)
    ("copy/copy_bias", "copy/copy_bias_bayes", None, "S2: copy bias G(O) (Bayes: 0)"),
    ("copy/novel_r4", "copy/novel_bayes_r4", None, "S2: novel-association ratio B(r=4) "
     "(Bayes: 1)"),
    ("coh/pair_defect", "coh/pair_defect_bayes", None, "S3: path-coherence defect (Bayes: 0)"),
    ("coh/exact_gap", "coh/exact_gap_bayes", None, "S3: chain-rule log-likelihood gap to "
     "exact (nats/word)"),
    ("sample/sample_tv", "sample/sample_tv_control", None, "S3: sampled documents, TV of the "
     "distinct-topics histogram (dashed: an exact sampler)"),
    ("near/near_concordance", None, 1.0, "S4: concordance of logits with log P*(w|O) at [MASK] "
     "(Bayes: 1, unrelated: 0.5)"),
    ("near/near_spearman", None, 1.0, "S4: Spearman(logits, log P*(w|O)) at [MASK] (Bayes: 1)"),
    ("walk/walk_c", "walk/walk_c_bayes", None, "S5: step-size offset c of the walk (dashed: "
     "E[theta|O])"),
    ("concept/concept_probe_acc", None, None, "S6: held-out linear topic probe on e_w"),
    ("red/swap_delta", None, 0.0, "S1 (supporting): eval loss change, attention -> uniform"),
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="embedding_space.py", description=__doc__)
    ap.add_argument("--spec", default="scripts/sweeps/embedding_space.json")
    ap.add_argument("--pmi-spec", default="scripts/sweeps/embedding_space_overlap.json",
                    help="the small grid on overlapping topics where P-pmi is graded")
    ap.add_argument("--out-dir", default="results",
                    help="where EMBEDDING_SPACE.md and figures/embedding_space/ go")
    ap.add_argument("--reuse-only", action="store_true",
                    help="no training: report on the finished points")
    args = ap.parse_args(argv)
    from topicdyn.process import enable_compilation_cache
    enable_compilation_cache()  # compiled programs shared with earlier runs (results unchanged)
    from topicdyn.config import ConfigError
    from topicdyn.singh.figures import loss_figure, pca_frames, stat_figure
    from topicdyn.singh.grid import load_points
    from topicdyn.singh.report import write_report
    from topicdyn.sweep.spec import load_spec

    try:
        specs = [load_spec(args.spec), load_spec(args.pmi_spec)]
    except (ConfigError, OSError, ValueError) as e:
        print(f"embedding_space: {e}")
        return 2
    t = time.perf_counter()
    if not args.reuse_only:
        from topicdyn.sweep.execute import run_sweep
        for spec in specs:
            run_sweep(spec, progress=False)
    seconds = None if args.reuse_only else time.perf_counter() - t
    from topicdyn.verdicts import judge_run
    for spec in specs:  # the verdicts of the claims as they are now
        for d in sorted((spec.out / "points").glob("*/probes.jsonl")):
            if (d.parent / "theory.json").exists():
                judge_run(d.parent)
    spec = specs[0]
    points = load_points(spec.out)
    pmi_points = load_points(specs[1].out) if (specs[1].out / "points").exists() else []
    if not points:
        print(f"embedding_space: no finished points in {spec.out}; run without --reuse-only")
        return 2
    out = Path(args.out_dir)
    fig_dir = out / "figures" / "embedding_space"
    figs = [loss_figure(points, fig_dir / "loss.png")]
    for key, ref, const, title in STATS:
        name = key.split("/")[1]
        # the walk's Bayes offset is defined for the Dirichlet prior only (under k-topics with
        # equal weights the posterior mean moves only when a new topic appears)
        only = (lambda p: p.cfg.data.prior == "dirichlet") if name == "walk_c" else None
        if any(p.series(key) is not None for p in points):
            figs.append(stat_figure(points, key, ref, title, fig_dir / f"{name}.png", const,
                                    only))
    # the principal-component views: the T-head model on 3-topic 32-word documents (else the
    # first attention point of the grid)
    T = points[0].cfg.data.T
    show = [p for p in points if p.model == f"A{T}" and p.cfg.data.prior == "k_topics"
            and p.cfg.data.k == 3 and p.cfg.data.N_min == p.cfg.data.N_max == 32] or \
        [p for p in points if p.model != "E"]
    if show:
        steps = [r["step"] for r in show[-1].rows]
        figs += [f for f in pca_frames(show[-1], steps, fig_dir / "pca")
                 if f.suffix == ".gif" or f.stem.endswith(f"{steps[-1]:05d}")
                 or f.stem.endswith(f"{steps[1]:05d}")]
    from topicdyn.reproduce.results import small_png
    for f in sorted(fig_dir.rglob("*.png")):  # committed results: 256-colour palette PNGs
        small_png(f, f)
    rel = [str(Path(f).relative_to(out)) for f in figs]
    path = write_report(points, out / "EMBEDDING_SPACE.md", rel, seconds,
                        "python scripts/embedding_space.py", pmi_points)
    print(f"wrote {path} ({len(figs)} figures)")
    return 0
