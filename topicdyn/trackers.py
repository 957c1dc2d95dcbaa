"""Optional experiment trackers: the scalars of metrics.jsonl and probes.jsonl, also sent to a
tracker while training (`topicdyn train --log-to tensorboard`). Off by default; the JSONL files
stay the record (a tracker is a view of them, never read back).

TensorBoard (the `tensorboard` extra: tensorboardX, no network): event files under
RUN_DIR/tensorboard/ (a sweep: each point's directory), `tensorboard --logdir RUN_DIR`. Tags
are the files' keys with one scalar per seed: `loss/seed0`, `grad_norm/value/seed0`,
`blocks/value_gap/seed1`, ... at the row's step. Metrics rows go out as they are written;
probe rows (written by the prober beside training) when the next metrics row is written and at
the end. A resumed run purges the tracker's events after the resume step (TensorBoard's
purge_step), so it shows what the files hold.
"""
from __future__ import annotations

from pathlib import Path

from topicdyn.config import ConfigError

TRACKERS = ("tensorboard",)


def check_trackers(names) -> tuple[str, ...]:
    """The tracker names, validated, their packages importable; else one ConfigError line."""
    names = tuple(names or ())
    for n in names:
        if n not in TRACKERS:
            raise ConfigError(f"--log-to: must be one of {', '.join(TRACKERS)}, got {n!r}")
    if "tensorboard" in names:
        try:
            import tensorboardX  # noqa: F401
        except ImportError:
            raise ConfigError("--log-to tensorboard: needs tensorboardX; install the extra: "
                              "pip install 'topicdyn[tensorboard]'") from None
    return names


def make_sinks(names, run_dirs: list[Path], start: int) -> list:
    """One sink per tracker named, over the given run directories (resumed at `start`)."""
    names = check_trackers(names)
    return [TensorBoardSink(run_dirs, start)] if "tensorboard" in names else []


def scalars(row: dict, first_seed: int) -> list[tuple[str, float]]:
    """(tag, value) pairs of one metrics or probes row: list entries are seeds, nested
    mappings join their keys with '/'; non-numbers (e.g. non-finite flags) are left out."""
    out = []

    def walk(prefix: str, v) -> None:
        if isinstance(v, dict):
            for k, x in v.items():
                walk(f"{prefix}/{k}", x)
        elif isinstance(v, list):
            for i, x in enumerate(v):
                if isinstance(x, (int, float)) and not isinstance(x, bool):
                    out.append((f"{prefix}/seed{first_seed + i}", float(x)))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out.append((prefix, float(v)))

    for k, v in row.items():
        if k != "step":
            walk(k, v)
    return out


class TensorBoardSink:
    """Writes each point's rows with tensorboardX into RUN_DIR/tensorboard/."""

    def __init__(self, run_dirs: list[Path], start: int):
        from tensorboardX import SummaryWriter

        from topicdyn.config import load_config

        self.writers, self.seed0, self.probed = {}, {}, {}
        for d in map(Path, run_dirs):
            # purge_step: TensorBoard drops events at steps >= it from earlier (killed) writers
            self.writers[d] = SummaryWriter(str(d / "tensorboard"),
                                            purge_step=start + 1 if start > 0 else None)
            self.seed0[d] = load_config(d).train.seed
            self.probed[d] = start if start > 0 else -1  # probe rows up to here are logged

    def row(self, run_dir: Path, row: dict) -> None:
        d = Path(run_dir)
        w = self.writers[d]
        for tag, v in scalars(row, self.seed0[d]):
            w.add_scalar(tag, v, row["step"])
        self._probes(d)

    def _probes(self, d: Path) -> None:
        from topicdyn.jsonl import read_jsonl

        for r in read_jsonl(d / "probes.jsonl", skip_bad=True):  # a line being written: later
            if r["step"] > self.probed[d]:
                for tag, v in scalars(r, self.seed0[d]):
                    self.writers[d].add_scalar(tag, v, r["step"])
                self.probed[d] = r["step"]

    def close(self) -> None:
        for d, w in self.writers.items():
            self._probes(d)  # the probers are closed first: every row is on disk
            w.close()
