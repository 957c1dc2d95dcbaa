"""Running probes on checkpoints: live (a train() hook) or offline (`topicdyn probe RUN_DIR`).

probes.jsonl holds one row per checkpoint: {"step": s, "probe/stat": [one value per seed]}.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import numpy as np

from topicdyn.config import Config


class CheckpointProber:
    """on_checkpoint hook for run.train: probes every saved checkpoint and appends a row."""

    def __init__(self, cfg: Config, run_dir: str | Path, names=None, n_eval: int = 80):
        from topicdyn.probes import DEFAULT_PROBES, make_context, make_prober

        self.cfg, self.path = cfg, Path(run_dir) / "probes.jsonl"
        self.fn = make_prober(make_context(cfg, n_eval=n_eval), names or DEFAULT_PROBES)
        self.params0 = None
        self.seconds = 0.0  # time spent probing (the benchmark reports it as overhead)

    def __call__(self, step: int, state, run_dir) -> dict:
        t = time.perf_counter()
        if self.params0 is None:
            if step == 0:  # a copy: the training chunk donates (deletes) the state's buffers
                self.params0 = jax.tree.map(lambda x: jax.numpy.array(x, copy=True), state.params)
            else:  # resumed run: the reference point is checkpoint 0
                from topicdyn.checkpoint import load_params
                self.params0 = jax.tree.map(jax.numpy.asarray, load_params(run_dir, 0)[0])
        out = jax.device_get(self.fn(state.params, self.params0))
        row = {"step": int(step)}
        row.update({k: [float(x) for x in np.atleast_1d(v)] for k, v in sorted(out.items())})
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        self.seconds += time.perf_counter() - t
        return row


def probe_run(run_dir: str | Path, names=None, n_eval: int = 80) -> Path:
    """Re-probe every stored checkpoint of a run; rewrites probes.jsonl. Returns its path."""
    from topicdyn.checkpoint import list_checkpoints, load_params
    from topicdyn.config import load_config

    run_dir = Path(run_dir)
    cfg = load_config(run_dir)
    prober = CheckpointProber(cfg, run_dir, names, n_eval)
    tmp = prober.path.with_suffix(".jsonl.tmp")
    tmp.unlink(missing_ok=True)
    prober.path = tmp  # write aside, then replace: an interrupted re-probe loses nothing
    for row in list_checkpoints(run_dir):
        params, _ = load_params(run_dir, row["step"])

        class _S:  # the hook reads only .params
            pass
        st = _S()
        st.params = params
        prober(row["step"], st, run_dir)
    final = run_dir / "probes.jsonl"
    tmp.replace(final)
    return final


def read_probes(run_dir: str | Path) -> list[dict]:
    p = Path(run_dir) / "probes.jsonl"
    if not p.exists():
        return []
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()]
