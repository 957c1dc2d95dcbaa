"""Command line: `topicdyn train | probe | plot | report | info | sweep | config | export |
compare` (the last three in topicdyn.commands).

Bad input exits with code 2 and one line on stderr; nothing already written is touched.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
from pathlib import Path

from topicdyn.config import (PRESETS, Config, ConfigError, apply_overrides, load_config, preset,
                             require_run)
from topicdyn.process import (configure_host_devices, enable_compilation_cache,
                              limit_malloc_arenas)


_ARGV: list[str] = []  # the command line being parsed (for the flag-style hint)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse's own convention)
        hint = None
        if message.startswith("unrecognized arguments: "):
            # `topicdyn train --steps 100`: argparse takes 100 as an override; the hint finds
            # the value after the flag in the command line
            from topicdyn.config.describe import flag_hint
            flags = message.split(": ", 1)[1].split()
            i = _ARGV.index(flags[0]) if flags and flags[0] in _ARGV else -1
            hint = flag_hint(_ARGV[i:] if i >= 0 else flags)
        self.exit(2, f"topicdyn: error: {message}" + (f"; {hint}" if hint else "") + "\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="topicdyn", description="Training dynamics of tiny transformers on LDA data.")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="train a preset or a config file (default: preset F)",
                       description="Train. Overrides are SECTION.FIELD=VALUE, e.g. data.T=5 "
                                   "train.steps=1000 train.n_seeds=4.")
    t.add_argument("overrides", nargs="*", metavar="SECTION.FIELD=VALUE")
    t.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="paper regime (E, V, A, F); default F unless --config is given")
    t.add_argument("--config", type=Path, help="a config.json (e.g. from an earlier run)")
    t.add_argument("--out", type=Path, help="run directory (default: runs/<preset>-s<seed>-<time>)")
    t.add_argument("--resume", type=Path, metavar="RUN_DIR",
                   help="continue RUN_DIR from its latest checkpoint, with its saved config")
    t.add_argument("--twin", action="store_true",
                   help="with data.source=corpus: train on synthetic documents of the LDA fitted "
                        "to the corpus instead (its twin; needs the text extra)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--no-probes", action="store_true",
                   help="do not probe checkpoints while training (probe later with topicdyn probe)")
    t.add_argument("--no-figures", action="store_true",
                   help="skip the figures and report.md at the end (topicdyn plot / report later)")
    t.add_argument("--log-to", action="append", default=[], metavar="TRACKER",
                   help="also send the metrics and probe scalars to an experiment tracker: "
                        "tensorboard (RUN_DIR/tensorboard/; the tensorboard extra)")

    pr = sub.add_parser("probe", help="re-probe every stored checkpoint of a run offline")
    pr.add_argument("run_dir", type=Path)
    pr.add_argument("--probes", default=None,
                    help="comma-separated probe names (default: all registered defaults)")

    i = sub.add_parser("info", help="config, checkpoints and last metrics of a run")
    i.add_argument("run_dir", type=Path)

    pl = sub.add_parser("plot", help="regenerate every figure of a run into RUN_DIR/figures/")
    pl.add_argument("run_dir", type=Path)

    rp = sub.add_parser("report", help="write RUN_DIR/report.md and report.html (figures "
                                       "embedded): claims table at the last checkpoint, "
                                       "figures, theory assumptions")
    rp.add_argument("run_dir", type=Path)
    rp.add_argument("--no-plots", action="store_true",
                    help="do not draw missing figures (by default they are drawn first)")

    sw = sub.add_parser("sweep", help="run a sweep spec (grid x seeds; resumable)",
                        description="Run a sweep spec (JSON, YAML or a .py file defining SPEC; "
                                    "see scripts/sweeps/). Re-running skips finished points and "
                                    "resumes interrupted ones.")
    sw.add_argument("spec", type=Path)
    sw.add_argument("--out", type=Path, help="sweep directory (default: the spec's out, or "
                                             "runs/sweeps/<name>)")
    sw.add_argument("--dry-run", action="store_true",
                    help="validate the spec and print the groups and what would run (a .py "
                         "spec is still executed to read its SPEC)")
    sw.add_argument("--summary-only", action="store_true",
                    help="only rewrite sweep_summary.* and the figures from the points' files")
    sw.add_argument("--distributed", action="store_true",
                    help="call jax.distributed.initialize() first (one process per host, e.g. "
                         "under Slurm); the member axis then spans every host's devices")
    sw.add_argument("--coordinator", metavar="HOST:PORT", help="with --distributed outside "
                    "Slurm/MPI/TPU pods: the coordinator (process 0) address ...")
    sw.add_argument("--num-processes", type=int, help="... the number of processes ...")
    sw.add_argument("--process-id", type=int, help="... and this process's index")
    sw.add_argument("--no-progress", action="store_true", help="no progress bar")
    sw.add_argument("--publish", type=Path, metavar="DIR",
                    help="then copy sweep_summary.csv and the figures (PNG) into DIR, e.g. "
                         "results/sweeps/<name> (what the project commits)")
    sw.add_argument("--log-to", action="append", default=[], metavar="TRACKER",
                    help="as for train: tensorboard (each point's tensorboard/)")
    from topicdyn.commands import COMMANDS
    for add, _ in COMMANDS.values():
        add(sub)
    return p


def config_from_args(a) -> Config:
    """The Config of --preset / --config and the overrides (train, config)."""
    if a.config is not None:
        cfg = load_config(a.config)
        if a.preset is not None:
            raise ConfigError("preset: give either --preset or --config, not both")
    else:
        cfg = preset(a.preset or "F")
    cfg = apply_overrides(cfg, a.overrides) if a.overrides else cfg
    if getattr(a, "twin", False):
        if cfg.data.source != "corpus":
            raise ConfigError("--twin: needs data.source=corpus (the twin is the LDA fitted to "
                              "a corpus)")
        import dataclasses

        from topicdyn.corpus.lda import twin_config
        cfg = twin_config(cfg)
        cfg = dataclasses.replace(cfg, preset=f"{cfg.preset}-twin"[:64])
    return cfg


def _prepare_corpus(cfg: Config, run_dir: Path, probes: bool) -> None:
    """A corpus run's LDA fit, read from or saved to run_dir/lda, where the probes' labels or
    the model's topic-block W^V need it."""
    if cfg.data.source == "corpus" and (probes or cfg.model.value == "topic_block"):
        from topicdyn.corpus.lda import corpus_lda
        print("fitting LDA topic labels (or reading them from the run directory) ...",
              flush=True)
        corpus_lda(cfg.data, cache_dir=Path(run_dir))


def cmd_train(a) -> int:
    from topicdyn.run import train

    if a.resume is not None:
        if a.config or a.preset or a.overrides or a.out:
            raise ConfigError("resume: --resume RUN_DIR takes the run's saved config; "
                              "drop --preset/--config/--out/overrides")
        run_dir = a.resume
        cfg = require_run(run_dir, "resume")
    else:
        cfg = config_from_args(a)
        from topicdyn.run import check_new_run_dir, default_run_dir
        run_dir = a.out or default_run_dir(cfg)
        check_new_run_dir(Path(run_dir))
    from topicdyn.memory import check_memory
    check_memory(cfg, cfg.train.n_seeds)  # before theory.json or anything else is written
    from topicdyn.trackers import check_trackers
    log_to = check_trackers(a.log_to)
    from topicdyn.faults import DirLock
    with DirLock(run_dir, "resume" if a.resume is not None else "out"):  # one writer, from here
        print(f"run directory: {run_dir}", flush=True)
        _prepare_corpus(cfg, Path(run_dir), not a.no_probes)
        hook = prefetch = None
        if not a.no_probes:
            _write_theory(cfg, Path(run_dir))
            from topicdyn.predicted import Prefetch
            from topicdyn.probes.runner import CheckpointProber
            hook = CheckpointProber(cfg, run_dir)
            prefetch = Prefetch(cfg)  # the reduced-dynamics prediction, beside training
        try:
            train(cfg, run_dir, resume=a.resume is not None, progress=not a.no_progress,
                  on_checkpoint=hook, log_to=log_to)
        except KeyboardInterrupt:
            print(f"\ninterrupted; continue with: topicdyn train --resume {run_dir}",
                  file=sys.stderr)
            if prefetch is not None and prefetch.alive():
                # its jitted computation cannot be cancelled, and an interpreter finalising
                # under it aborts (SIGABRT): leave at once (every file is already complete)
                sys.stderr.flush()
                sys.stdout.flush()
                os._exit(130)
            return 130
        except BaseException:
            # e.g. a refused resume before training began: the prober's and the prediction's
            # threads may still be compiling; an interpreter exiting under them aborts
            # (SIGABRT), so wait for them
            if hook is not None:
                hook.close(raise_errors=False)
            if prefetch is not None:
                prefetch.join()
            raise
        if prefetch is not None:
            prefetch.join()
        _print_summary(run_dir)
        if not a.no_probes:
            _print_verdicts(Path(run_dir))
            if not a.no_figures:
                _figures_and_report(Path(run_dir))
    print(f"done: {run_dir}")
    return 0


def _write_theory(cfg: Config, run_dir: Path, refresh: bool = False) -> None:
    """theory.json: predictions for this exact config (kept on resume, redone by `probe`)."""
    path = run_dir / "theory.json"
    if path.exists() and not refresh:
        try:
            json.loads(path.read_text())
            return
        except (ValueError, OSError):  # damaged (e.g. a bad disk): computed again
            pass
    from topicdyn.verdicts import run_predictions

    import time
    print("theory: computing the predictions for this config ...", end=" ", flush=True)
    t = time.perf_counter()
    pred = run_predictions(cfg)
    print(f"done ({time.perf_counter() - t:.1f} s)", flush=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    from topicdyn.jsonl import write_atomic
    write_atomic(path, json.dumps(pred, indent=1) + "\n")


def _print_verdicts(run_dir: Path) -> None:
    from topicdyn.verdicts import format_table, judge_run

    claims = judge_run(run_dir)
    if claims:
        from topicdyn.config import load_config
        print("\nclaims at the last checkpoint (verdicts.jsonl has every checkpoint):")
        print(format_table(claims, load_config(run_dir).train.n_seeds))


def _print_summary(run_dir: Path) -> None:
    from topicdyn.run import read_metrics

    rows = read_metrics(run_dir)
    if rows:
        first, last = rows[0], rows[-1]
        mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
        print(f"loss (mean over seeds): step {first['step']}: {mean(first['loss']):.4f} -> "
              f"step {last['step']}: {mean(last['loss']):.4f}")


def cmd_probe(a) -> int:
    from topicdyn.checkpoint import list_checkpoints
    from topicdyn.probes.runner import probe_run

    require_run(a.run_dir)
    if not list_checkpoints(a.run_dir):
        raise ConfigError(f"run_dir: {a.run_dir} has no checkpoints yet")
    names = tuple(x for x in a.probes.split(",") if x) if a.probes else None
    if names:
        from topicdyn.probes import PROBES
        unknown = [n for n in names if n not in PROBES]
        if unknown:
            raise ConfigError(f"--probes: unknown {', '.join(unknown)}; allowed: "
                              f"{', '.join(sorted(PROBES))}")
    _prepare_corpus(load_config(a.run_dir), Path(a.run_dir), True)
    _write_theory(load_config(a.run_dir), a.run_dir, refresh=True)
    path = probe_run(a.run_dir, names)
    print(f"wrote {path}")
    _print_verdicts(a.run_dir)
    return 0


def _figures_and_report(run_dir: Path) -> None:
    """End of a probed training run: figures and report.md. A plotting failure does not fail
    the run (its data are all on disk); it says how to retry."""
    try:
        from topicdyn.plots import plot_run
        from topicdyn.report import write_report

        print("figures and report ...", flush=True)
        plot_run(run_dir)
        md = write_report(run_dir)
        print(f"report: {md} and {md.with_suffix('.html')} (figures in {run_dir / 'figures'})")
    except Exception as e:  # noqa: BLE001
        print(f"figures/report failed ({type(e).__name__}: {e}); retry with: topicdyn plot "
              f"{run_dir} && topicdyn report {run_dir}", file=sys.stderr)


def cmd_plot(a) -> int:
    from topicdyn.plots import plot_run

    require_run(a.run_dir)
    for f in plot_run(a.run_dir):
        print(f"wrote {f}")
    return 0


def cmd_report(a) -> int:
    from topicdyn.report import last_claims, write_report

    require_run(a.run_dir)
    last_claims(a.run_dir)  # a run without probes or theory fails here, before any plotting
    if not a.no_plots and not (a.run_dir / "figures").is_dir():
        from topicdyn.plots import plot_run
        plot_run(a.run_dir)
    md = write_report(a.run_dir)
    print(f"wrote {md} and {md.with_suffix('.html')}")
    return 0


def cmd_info(a) -> int:
    from topicdyn.checkpoint import list_checkpoints
    from topicdyn.run import read_metrics

    run_dir = a.run_dir
    cfg = require_run(run_dir)
    print(f"run: {run_dir}")
    print(f"preset: {cfg.preset}  model: {cfg.model.name}  steps: {cfg.train.steps}  "
          f"seeds: {cfg.train.n_seeds} (from {cfg.train.seed})")
    print("config: " + json.dumps(cfg.to_dict(), sort_keys=True))
    from topicdyn.config import RECORD_KEY

    saved = json.loads((Path(run_dir) / "config.json").read_text()).get(RECORD_KEY)
    print("implementation: " + (json.dumps(saved, sort_keys=True) if saved else
                                "not recorded (a run from before implementations were recorded)"))
    ck = list_checkpoints(run_dir)
    print(f"checkpoints: {len(ck)}" + (f" (steps {ck[0]['step']}..{ck[-1]['step']}; latest "
                                        f"sha256 {ck[-1]['sha256'][:16]})" if ck else ""))
    rows = read_metrics(run_dir)
    if rows:
        print("last metrics: " + json.dumps(rows[-1]))
    else:
        print("last metrics: none yet")
    return 0


def cmd_sweep(a) -> int:
    from topicdyn.sweep import load_spec
    from topicdyn.sweep.publish import publish

    spec = load_spec(a.spec, out=a.out)  # validates every point before anything runs
    if a.summary_only or a.dry_run:
        rc = _sweep_offline(spec, a.dry_run)
        return publish(spec, a.publish) if rc == 0 and a.publish and not a.dry_run else rc
    if a.distributed or a.coordinator:
        import jax
        # Slurm, Open MPI and TPU pods: None = read from the environment
        jax.distributed.initialize(a.coordinator, a.num_processes, a.process_id)
    from topicdyn.sweep import run_sweep

    from topicdyn.trackers import check_trackers
    try:
        report = run_sweep(spec, progress=not a.no_progress, log_to=check_trackers(a.log_to))
    except KeyboardInterrupt:
        print(f"\ninterrupted; re-run the same command to resume ({spec.out})", file=sys.stderr)
        return 130
    if "summary" in report:
        counts = collections.Counter(v.split(" from ")[0] for v in report["points"].values())
        print("points: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
        print(f"summary: {report['summary']}")
        for f in report.get("figures", []):
            print(f"wrote {f}")
        if a.publish:
            return publish(spec, a.publish)
    return 0


def _sweep_offline(spec, dry_run: bool) -> int:
    """--dry-run: the plan; --summary-only: sweep_summary.* and figures from files."""
    if dry_run:
        from topicdyn.sweep.execute import describe_plan
        print("\n".join(describe_plan(spec)))
        return 0
    from topicdyn.sweep import write_summary
    from topicdyn.sweep.plots import plot_sweep

    print(f"wrote {write_summary(spec)}")
    for f in plot_sweep(spec):
        print(f"wrote {f}")
    return 0


def _checkpoint_error() -> type:
    from topicdyn.checkpoint import CheckpointError  # imports jax: only once it is needed
    return CheckpointError


EXIT_BAD_INPUT, EXIT_IO, EXIT_DIVERGED = 2, 1, 3


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 done, 2 bad input (one line naming the field), 1 an I/O error (one line
    naming the path; earlier checkpoints intact, --resume after fixing it), 3 diverged
    (non-finite values; the last good checkpoint is kept), 130 interrupted."""
    _ARGV[:] = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    limit_malloc_arenas()
    configure_host_devices()  # before jax is imported
    if args.cmd != "info":  # the others compile programs (info only reads files)
        enable_compilation_cache()
    from topicdyn.commands import COMMANDS
    try:
        return {"train": cmd_train, "info": cmd_info, "probe": cmd_probe, "plot": cmd_plot,
                "report": cmd_report, "sweep": cmd_sweep,
                **{k: run for k, (_, run) in COMMANDS.items()}}[args.cmd](args)
    except (ConfigError, _checkpoint_error()) as e:
        print(f"topicdyn: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as e:
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        print(f"topicdyn: error: {e.strerror or e}{where}; files written before it are intact; "
              "fix it and run the command again (training: --resume)", file=sys.stderr)
        return EXIT_IO
    except _diverged() as e:
        print(f"topicdyn: {e}", file=sys.stderr)
        return EXIT_DIVERGED


def _diverged() -> type:
    from topicdyn.loop import Diverged  # imports jax: only once it is needed
    return Diverged


if __name__ == "__main__":
    sys.exit(main())
