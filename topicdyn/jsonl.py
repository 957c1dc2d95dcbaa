"""JSON-lines files of a run directory (metrics, probes, verdicts, checkpoint index, ...)."""
from __future__ import annotations

import json
from pathlib import Path


def read_jsonl(path: str | Path, skip_bad: bool = False) -> list[dict]:
    """The rows of a .jsonl file ([] if it does not exist). skip_bad: ignore a line that is not
    JSON (the last line of a file cut by an interruption) instead of raising."""
    p = Path(path)
    if not p.exists():
        return []
    rows = []
    for line in p.read_text().splitlines():
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if not skip_bad:
                raise
    return rows
