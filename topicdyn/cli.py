"""Command line: `topicdyn train | info` (later: probe, plot, report, sweep).

Bad input exits with code 2 and one line on stderr; nothing already written is touched.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from topicdyn.config import PRESETS, Config, ConfigError, apply_overrides, load_config, preset


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse's own convention)
        self.exit(2, f"topicdyn: error: {message}\n")


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
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--no-probes", action="store_true",
                   help="do not probe checkpoints while training (probe later with topicdyn probe)")

    pr = sub.add_parser("probe", help="re-probe every stored checkpoint of a run offline")
    pr.add_argument("run_dir", type=Path)
    pr.add_argument("--probes", default=None,
                    help="comma-separated probe names (default: all registered defaults)")

    i = sub.add_parser("info", help="config, checkpoints and last metrics of a run")
    i.add_argument("run_dir", type=Path)
    return p


def _config_from_args(a) -> Config:
    if a.config is not None:
        cfg = load_config(a.config)
        if a.preset is not None:
            raise ConfigError("preset: give either --preset or --config, not both")
    else:
        cfg = preset(a.preset or "F")
    return apply_overrides(cfg, a.overrides) if a.overrides else cfg


def cmd_train(a) -> int:
    from topicdyn.run import train

    if a.resume is not None:
        if a.config or a.preset or a.overrides or a.out:
            raise ConfigError("resume: --resume RUN_DIR takes the run's saved config; "
                              "drop --preset/--config/--out/overrides")
        run_dir = a.resume
        if not (run_dir / "config.json").exists():
            raise ConfigError(f"resume: {run_dir} is not a run directory (no config.json)")
        cfg = load_config(run_dir)
    else:
        cfg = _config_from_args(a)
        from topicdyn.run import check_new_run_dir, default_run_dir
        run_dir = a.out or default_run_dir(cfg)
        check_new_run_dir(Path(run_dir))
    print(f"run directory: {run_dir}", flush=True)
    hook = None
    if not a.no_probes:
        _write_theory(cfg, Path(run_dir))
        from topicdyn.probes.runner import CheckpointProber
        hook = CheckpointProber(cfg, run_dir)
    try:
        train(cfg, run_dir, resume=a.resume is not None, progress=not a.no_progress,
              on_checkpoint=hook)
    except KeyboardInterrupt:
        print(f"\ninterrupted; continue with: topicdyn train --resume {run_dir}", file=sys.stderr)
        return 130
    _print_summary(run_dir)
    if not a.no_probes:
        _print_verdicts(Path(run_dir))
    print(f"done: {run_dir}")
    return 0


def _write_theory(cfg: Config, run_dir: Path, refresh: bool = False) -> None:
    """theory.json: predictions for this exact config (kept on resume, redone by `probe`)."""
    path = run_dir / "theory.json"
    if path.exists() and not refresh:
        return
    from topicdyn.verdicts import run_predictions

    print("computing theory predictions for this config ...", flush=True)
    pred = run_predictions(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(pred, indent=1) + "\n")
    tmp.replace(path)


def _print_verdicts(run_dir: Path) -> None:
    from topicdyn.verdicts import format_table, judge_run

    claims = judge_run(run_dir)
    if claims:
        print("\nclaims at the last checkpoint (verdicts.jsonl has every checkpoint):")
        print(format_table(claims))


def _print_summary(run_dir: Path) -> None:
    from topicdyn.run import read_metrics

    rows = read_metrics(run_dir)
    if rows:
        first, last = rows[0], rows[-1]
        mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
        print(f"loss (mean over seeds): step {first['step']}: {mean(first['loss']):.4f} -> "
              f"step {last['step']}: {mean(last['loss']):.4f}")


def _require_run(run_dir: Path) -> None:
    if not (run_dir / "config.json").exists():
        raise ConfigError(f"run_dir: {run_dir} is not a run directory (no config.json)")


def cmd_probe(a) -> int:
    from topicdyn.checkpoint import list_checkpoints
    from topicdyn.probes.runner import probe_run

    _require_run(a.run_dir)
    if not list_checkpoints(a.run_dir):
        raise ConfigError(f"run_dir: {a.run_dir} has no checkpoints yet")
    names = tuple(x for x in a.probes.split(",") if x) if a.probes else None
    _write_theory(load_config(a.run_dir), a.run_dir, refresh=True)
    path = probe_run(a.run_dir, names)
    print(f"wrote {path}")
    _print_verdicts(a.run_dir)
    return 0


def cmd_info(a) -> int:
    from topicdyn.checkpoint import list_checkpoints
    from topicdyn.run import read_metrics

    run_dir = a.run_dir
    if not (run_dir / "config.json").exists():
        raise ConfigError(f"run_dir: {run_dir} is not a run directory (no config.json)")
    cfg = load_config(run_dir)
    print(f"run: {run_dir}")
    print(f"preset: {cfg.preset}  model: {cfg.model.name}  steps: {cfg.train.steps}  "
          f"seeds: {cfg.train.n_seeds} (from {cfg.train.seed})")
    print("config: " + json.dumps(cfg.to_dict(), sort_keys=True))
    ck = list_checkpoints(run_dir)
    print(f"checkpoints: {len(ck)}" + (f" (steps {ck[0]['step']}..{ck[-1]['step']}; latest "
                                        f"sha256 {ck[-1]['sha256'][:16]})" if ck else ""))
    rows = read_metrics(run_dir)
    if rows:
        print("last metrics: " + json.dumps(rows[-1]))
    else:
        print("last metrics: none yet")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return {"train": cmd_train, "info": cmd_info, "probe": cmd_probe}[args.cmd](args)
    except ConfigError as e:
        print(f"topicdyn: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
