"""Probing a sweep group: one vmapped probe call per evaluation set, rows per point.

The group's training loop itself is topicdyn.loop (shared with single runs).
"""
from __future__ import annotations

import time
from pathlib import Path

import jax
import numpy as np

from topicdyn.config import Config
from topicdyn.jsonl import append_jsonl
from topicdyn.probes.runner import CheckpointProber


class GroupProber(CheckpointProber):
    """Probes a subset of a group's members (one train.seed: one evaluation set) in one vmapped
    call and appends each point's slice to that point's probes.jsonl.

    members: indices into the group's member axis; views: [(run_dir, lo, hi)], a point's
    members being members[lo:hi]; params0: the subset's parameters at step 0 (host arrays)."""

    def __init__(self, cfg: Config, members, views, params0):
        self.members, self.views, self._p0 = np.asarray(members), views, params0
        super().__init__(cfg, views[0][0], background=True)

    def _probe(self, step, params, run_dir):
        t = time.perf_counter()
        sub = jax.tree.map(lambda x: np.asarray(x)[self.members], params)
        out = jax.device_get(self.fn(sub, self._p0))
        for d, lo, hi in self.views:
            row = {"step": int(step)}
            row.update({k: [float(x) for x in np.atleast_1d(v)[lo:hi]]
                        for k, v in sorted(out.items())})
            append_jsonl(Path(d) / "probes.jsonl", row)
        self.seconds += time.perf_counter() - t
