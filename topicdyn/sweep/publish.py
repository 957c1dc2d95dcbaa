"""`topicdyn sweep SPEC --publish DIR`: a finished sweep's table and figures copied into DIR
(e.g. results/sweeps/<name>, what the project commits), touching only files it wrote before."""
from __future__ import annotations

import json
from pathlib import Path

from topicdyn.config import ConfigError

PUBLISH_MANIFEST = ".topicdyn-published.json"


def publish(spec, dest: Path) -> int:
    """Copy a finished sweep's summary table and figures into dest. Only files an earlier
    publish wrote (listed in dest's manifest) are replaced or removed; nothing else in dest is
    touched, and a file of the same name that topicdyn did not write is refused."""
    import shutil

    src = Path(spec.out)
    files = [src / "sweep_summary.csv", *sorted((src / "figures").glob("*.png"))]
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise ConfigError(f"--publish: {missing[0]} does not exist; run the sweep to the end first")
    manifest = dest / PUBLISH_MANIFEST
    try:
        ours = set(json.loads(manifest.read_text())["files"]) if manifest.exists() else set()
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"--publish: {manifest} is damaged; delete it and the files it "
                          "listed, or publish into another directory") from None
    names = {f.name for f in files}
    clash = sorted(n for n in names if (dest / n).exists() and n not in ours)
    if clash:
        raise ConfigError(f"--publish: {dest / clash[0]} exists and was not written by an earlier "
                          "publish; move it or publish into another directory")
    dest.mkdir(parents=True, exist_ok=True)
    for old in sorted(ours - names):  # a figure the sweep no longer makes
        (dest / old).unlink(missing_ok=True)
    for f in files:
        shutil.copy2(f, dest / f.name)
    from topicdyn.jsonl import write_atomic
    write_atomic(manifest, json.dumps({"files": sorted(names)}, indent=1) + "\n")
    print(f"published {len(files)} files to {dest} (manifest {manifest.name})")
    return 0
