"""The researcher's subcommands: `topicdyn config`, `topicdyn export`, `topicdyn compare`.

Each has add_*(subparsers) for its arguments and cmd_*(args) -> exit code; topicdyn.cli
registers them. Errors are ConfigError lines (exit 2), as everywhere in the CLI.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from topicdyn.config import PRESETS


def add_config(sub) -> None:
    c = sub.add_parser("config", help="every config field: value, default, allowed values, help",
                       description="Print every config field of a preset (default F) or a "
                                   "config.json with overrides applied: its value, default, "
                                   "allowed values and what it does.")
    c.add_argument("overrides", nargs="*", metavar="SECTION.FIELD=VALUE")
    c.add_argument("--preset", choices=sorted(PRESETS), default=None)
    c.add_argument("--config", type=Path, help="a config.json (e.g. from an earlier run)")
    c.add_argument("--json", action="store_true", help="a JSON list of the fields instead")


def cmd_config(a) -> int:
    from topicdyn.cli import config_from_args
    from topicdyn.config.describe import describe, format_fields

    rows = describe(config_from_args(a))
    if a.json:
        print(json.dumps(rows, indent=1, default=list))
    else:
        print(format_fields(rows))
    return 0


def add_export(sub) -> None:
    e = sub.add_parser("export", help="a run's (or sweep's) metrics, probes, verdicts and theory "
                                      "as tidy tables (CSV or parquet; the frames extra)")
    e.add_argument("run_dir", type=Path, metavar="RUN_DIR",
                   help="a run directory, or a sweep directory (all its points)")
    e.add_argument("--to", choices=("csv", "parquet"), default="csv")
    e.add_argument("--out", type=Path, help="output directory (default RUN_DIR/export)")


def cmd_export(a) -> int:
    from topicdyn.frames import export

    for f in export(a.run_dir, a.to, a.out):
        print(f"wrote {f}")
    return 0


def add_compare(sub) -> None:
    c = sub.add_parser("compare", help="overlay the main curves of several runs (or sweep "
                                       "points) and print their claims side by side")
    c.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR",
                   help="run directories; a sweep directory stands for all its points")
    c.add_argument("--out", type=Path, help="figures and comparison.md (default "
                                            "runs/compare-<time>)")
    c.add_argument("--labels", help="comma-separated labels, one per run (default: the config "
                                    "fields that differ)")


def cmd_compare(a) -> int:
    from topicdyn.compare import compare

    out = a.out or Path("runs") / f"compare-{time.strftime('%Y%m%d-%H%M%S')}"
    labels = [x.strip() for x in a.labels.split(",")] if a.labels else None
    files, table = compare(a.runs, out, labels)
    print("claims at each run's last checkpoint:")
    print(table)
    for f in files:
        print(f"wrote {f}")
    return 0


COMMANDS = {"config": (add_config, cmd_config), "export": (add_export, cmd_export),
            "compare": (add_compare, cmd_compare)}
