"""Runs as data: a run or sweep directory's files as tidy pandas DataFrames (the `frames`
extra: pip install 'topicdyn[frames]').

    run = topicdyn.load_run("runs/F-s0-...")
    run.metrics          # one row per (step, seed): step, seed, loss, loss_window, loss_last,
                         #   grad_norm/<group>, param_norm/<group>
    run.probes           # one row per (step, seed): step, seed, blocks/value_gap, ...
    run.verdicts         # one row per (step, claim): the fields of verdicts.jsonl
    run.theory           # one row per predicted quantity: quantity, value, se
    sweep = topicdyn.load_sweep("runs/sweeps/two_stage_lag")
    sweep.metrics        # the same with `point` and the swept fields as columns

Column names are the files' keys; a nested mapping's keys are joined with '/'
(metrics.jsonl's {"grad_norm": {"value": [...]}} becomes grad_norm/value). The files' lists
hold one entry per seed; `seed` is the member's seed (train.seed + its index). Verdicts judge
all seeds together, so they have no seed column. `topicdyn export RUN_DIR --to csv|parquet`
writes the frames as files.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from topicdyn.config import Config, ConfigError, require_run
from topicdyn.jsonl import read_jsonl

FRAMES = ("metrics", "probes", "verdicts", "theory", "timing", "checkpoints")


def pandas():
    """The pandas module, or one ConfigError line saying which extra installs it."""
    try:
        import pandas as pd
    except ImportError:
        raise ConfigError("pandas is not installed: run frames need the frames extra "
                          "(pip install 'topicdyn[frames]')") from None
    return pd


def _flat(prefix: str, value, out: dict) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flat(f"{prefix}/{k}" if prefix else k, v, out)
    else:
        out[prefix] = value


def per_seed_frame(rows: list[dict], first_seed: int, n_seeds: int):
    """Tidy frame of metrics/probes rows: lists of length n_seeds split into one row per seed
    (`seed` = first_seed + index), other values repeated; columns in file order."""
    pd = pandas()
    records = []
    for r in rows:
        flat: dict = {}
        _flat("", r, flat)
        step = flat.pop("step")
        for j in range(n_seeds):
            rec = {"step": step, "seed": first_seed + j}
            for k, v in flat.items():
                rec[k] = v[j] if isinstance(v, list) and len(v) == n_seeds else v
            records.append(rec)
    return pd.DataFrame.from_records(records, columns=_columns(records, ("step", "seed")))


def _columns(records: list[dict], first: tuple) -> list[str]:
    cols = dict.fromkeys(first)
    for r in records:
        cols.update(dict.fromkeys(r))
    return list(cols)


def verdict_frame(rows: list[dict]):
    """One row per (step, claim) of verdicts.jsonl; nested fields joined with '/'."""
    pd = pandas()
    records = []
    for r in rows:
        for c in r.get("claims", []):
            rec: dict = {"step": r["step"]}
            _flat("", c, rec)
            records.append(rec)
    return pd.DataFrame.from_records(records, columns=_columns(records, ("step", "claim")))


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def theory_frame(theory: dict):
    """One row per numeric prediction of theory.json: quantity (the key path joined with '/'),
    value, se (its Monte Carlo s.e. where the file gives one: a sibling `<key>_se`, or
    `stderr` beside a `loss`)."""
    pd = pandas()
    records = []

    def walk(prefix: str, d: dict) -> None:
        for k, v in d.items():
            path = f"{prefix}/{k}" if prefix else k
            if isinstance(v, dict):
                walk(path, v)
            elif _is_num(v) and not (k.endswith("_se") or k == "stderr"):
                se = d.get(f"{k}_se", d.get("stderr") if k == "loss" else None)
                records.append({"quantity": path, "value": float(v),
                                "se": float(se) if _is_num(se) else float("nan")})

    walk("", theory)
    return pd.DataFrame.from_records(records, columns=["quantity", "value", "se"])


@dataclass
class Run:
    """A run directory's files as DataFrames (module doc); `params(step)` loads a checkpoint."""

    path: Path
    config: Config
    metrics: object
    probes: object
    verdicts: object
    theory: object
    timing: object
    checkpoints: object
    theory_json: dict = field(default_factory=dict)

    def params(self, step: int | None = None):
        """Parameters of checkpoint `step` (default: the last); every leaf has a leading seed
        axis of length config.train.n_seeds."""
        from topicdyn.checkpoint import load_params
        return load_params(self.path, step)[0]


def load_run(run_dir: str | Path) -> Run:
    """A run directory as tidy DataFrames (module doc). ConfigError if it is not a run
    directory or pandas is missing."""
    pd = pandas()
    run_dir = Path(run_dir)
    cfg = require_run(run_dir)
    seed0, n = cfg.train.seed, cfg.train.n_seeds
    theory = {}
    if (run_dir / "theory.json").exists():
        try:
            theory = json.loads((run_dir / "theory.json").read_text())
        except ValueError:
            raise ConfigError(f"run_dir: {run_dir / 'theory.json'} is damaged") from None
    ck = read_jsonl(run_dir / "checkpoints.jsonl")
    return Run(
        path=run_dir, config=cfg,
        metrics=per_seed_frame(read_jsonl(run_dir / "metrics.jsonl"), seed0, n),
        probes=per_seed_frame(read_jsonl(run_dir / "probes.jsonl"), seed0, n),
        verdicts=verdict_frame(read_jsonl(run_dir / "verdicts.jsonl")),
        theory=theory_frame(theory),
        timing=pd.DataFrame.from_records(read_jsonl(run_dir / "timing.jsonl")),
        checkpoints=pd.DataFrame.from_records(ck, columns=["step", "sha256"]),
        theory_json=theory)


@dataclass
class Sweep:
    """A sweep directory: each frame of its points' runs concatenated with `point` (the point's
    directory name) and one column per swept config field; `summary` is sweep_summary.jsonl
    (one row per point x seed); `runs` maps point names to their Run."""

    path: Path
    runs: dict
    metrics: object
    probes: object
    verdicts: object
    theory: object
    summary: object


def load_sweep(sweep_dir: str | Path) -> Sweep:
    """A sweep directory (the `out` of a sweep spec) as tidy DataFrames (see Sweep)."""
    pd = pandas()
    sweep_dir = Path(sweep_dir)
    meta = sweep_dir / "sweep.json"
    if not meta.exists():
        raise ConfigError(f"sweep_dir: {sweep_dir} is not a sweep directory (no sweep.json)")
    try:
        points = json.loads(meta.read_text())["points"]
    except (ValueError, KeyError):
        raise ConfigError(f"sweep_dir: {meta} is damaged") from None
    runs, parts = {}, {k: [] for k in ("metrics", "probes", "verdicts", "theory")}
    for p in points:
        d = sweep_dir / "points" / p["name"]
        if not (d / "config.json").exists():
            continue  # not started yet
        run = runs[p["name"]] = load_run(d)
        values = swept_values(p.get("values", {}))
        for k in parts:
            df = getattr(run, k).copy()
            df.insert(0, "point", p["name"])
            for j, (axis, v) in enumerate(values.items()):
                df.insert(1 + j, axis, [v] * len(df))
            parts[k].append(df)
    frames = {k: (pd.concat(v, ignore_index=True) if v else pd.DataFrame())
              for k, v in parts.items()}
    summary = pd.DataFrame.from_records(read_jsonl(sweep_dir / "sweep_summary.jsonl",
                                                   skip_bad=True))
    return Sweep(path=sweep_dir, runs=runs, summary=summary, **frames)


def swept_values(values: dict) -> dict:
    """{config field: value} of a point, tied axes ("data.N_min,data.N_max": [20, 30]) split
    into their fields."""
    out = {}
    for axis, v in values.items():
        fields = axis.split(",")
        if len(fields) > 1 and isinstance(v, list) and len(v) == len(fields):
            out.update(zip(fields, v))
        else:
            out[axis] = v
    return out


def _parquet_safe(df):
    """Object columns holding several types (a verdict's `predicted` is '>1' or a number)
    as text, which parquet can store; None stays missing."""
    df = df.copy()
    for c in df.columns:
        if df[c].dtype == object:
            kinds = {type(v) for v in df[c] if v is not None and v == v}
            if len(kinds) > 1 or kinds & {list, dict, tuple}:
                df[c] = [None if v is None else (json.dumps(v) if isinstance(v, (list, dict,
                                                                                  tuple))
                                                 else str(v)) for v in df[c]]
    return df


def export(path: str | Path, to: str = "csv", out: str | Path | None = None) -> list[Path]:
    """Write the frames of a run (or sweep) directory as <frame>.csv or .parquet files into
    `out` (default PATH/export/); returns the files written. Each file is written aside and
    renamed (a reader never sees half a file)."""
    path = Path(path)
    if to not in ("csv", "parquet"):
        raise ConfigError(f"--to: must be one of csv, parquet, got {to!r}")
    if to == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise ConfigError("--to parquet: needs pyarrow (pip install 'topicdyn[frames]')") \
                from None
    if (path / "sweep.json").exists():
        data = load_sweep(path)
        frames = {k: getattr(data, k) for k in ("metrics", "probes", "verdicts", "theory",
                                                "summary")}
    else:
        data = load_run(path)
        frames = {k: getattr(data, k) for k in FRAMES}
    out = Path(out) if out is not None else path / "export"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, df in frames.items():
        dest = out / f"{name}.{to}"
        tmp = dest.with_name(f".{dest.name}.{time.monotonic_ns()}.tmp")
        if to == "csv":
            df.to_csv(tmp, index=False)
        else:
            _parquet_safe(df).to_parquet(tmp, index=False)
        tmp.replace(dest)
        written.append(dest)
    return written


__all__ = ["Run", "Sweep", "export", "load_run", "load_sweep", "per_seed_frame", "theory_frame",
           "verdict_frame"]
