"""JSON-lines files of a run directory (metrics, probes, verdicts, checkpoint index, ...).

Rows are appended one line at a time, so an interruption can leave at most the *last* line torn;
readers skip such a line (and `topicdyn train --resume` removes it). A damaged line anywhere else
is reported as one ConfigError naming the file and the line.
"""
from __future__ import annotations

import json
from pathlib import Path

from topicdyn.config import ConfigError


def read_jsonl(path: str | Path, skip_bad: bool = False) -> list[dict]:
    """The rows (JSON objects) of a .jsonl file ([] if it does not exist). A torn last line is
    skipped; with skip_bad any damaged line is, otherwise a damaged earlier line raises."""
    p = Path(path)
    if not p.exists():
        return []
    try:
        text = p.read_text(errors="replace")
    except OSError as e:
        raise ConfigError(f"{p}: cannot be read ({e.strerror or e})") from None
    lines = [ln for ln in text.splitlines() if ln.strip()]
    rows = []
    for i, line in enumerate(lines):
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            row = None
        if not isinstance(row, dict) or not isinstance(row.get("step", 0), int):
            if skip_bad or i == len(lines) - 1:
                continue
            raise ConfigError(f"{p}: line {i + 1} is damaged (not a row of this file); "
                              "topicdyn train --resume on the run drops it and redoes its step")
        rows.append(row)
    return rows


def append_jsonl(path: Path, row: dict) -> None:
    """Append one row (one line: an interruption can tear only the last line)."""
    with Path(path).open("a") as f:
        f.write(json.dumps(row) + "\n")


def write_atomic(path: Path, text: str) -> None:
    """Write text aside, then rename it over path: a reader (or a kill) sees old or new."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
