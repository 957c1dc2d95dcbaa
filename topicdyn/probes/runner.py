"""Running probes on checkpoints: live (a train() hook) or offline (`topicdyn probe RUN_DIR`).

probes.jsonl holds one row per checkpoint: {"step": s, "probe/stat": [one value per seed]}.
"""
from __future__ import annotations

import queue
import threading
import time
from pathlib import Path

import jax
import numpy as np

from topicdyn.config import Config
from topicdyn.faults import crash_point
from topicdyn.jsonl import append_jsonl, read_jsonl


class CheckpointProber:
    """on_checkpoint hook for a training loop: probes every saved checkpoint and appends a row.

    With background=True (the default) the work runs in a worker thread, in checkpoint order:
    building the evaluation context and compiling the probes overlap with the compilation and
    steps of training (XLA releases the GIL), and a checkpoint's probes run while training goes
    on. The hook keeps a host copy of the parameters (the training chunk donates the state's
    buffers). close() waits for every queued checkpoint and re-raises a worker error; run.train
    calls it before returning, so probes.jsonl is complete when train() returns.
    """

    def __init__(self, cfg: Config, run_dir: str | Path, names=None,
                 background: bool = True):
        self.cfg, self.path = cfg, Path(run_dir) / "probes.jsonl"
        self.names = names
        self.fn = None
        self.params0 = None
        self.seconds = 0.0  # time spent probing (the benchmark reports it as overhead)
        self.setup_seconds = 0.0  # of which: evaluation set, Bayes table (once per run)
        self.probe_seconds: list[float] = []  # per checkpoint; the first includes compiling
        self._error: BaseException | None = None
        self._queue: queue.Queue | None = None
        self.submitted = self.finished = 0  # checkpoints handed over / probed (progress bar)
        if background:
            self._queue = queue.Queue()
            self._thread = threading.Thread(target=self._work, name="topicdyn-prober",
                                            daemon=True)
            self._thread.start()
        else:
            self._setup()

    def _setup(self):
        from topicdyn.probes import make_context, make_prober

        t = time.perf_counter()
        names = self.names or self.cfg.train.probes
        self.fn = make_prober(make_context(self.cfg, names=names), names)
        self.setup_seconds = time.perf_counter() - t
        self.seconds += self.setup_seconds

    def __call__(self, step: int, state, run_dir) -> dict | None:
        params = jax.device_get(state.params)  # numpy copy, safe from buffer donation
        self.submitted += 1
        if self._queue is None or not self._thread.is_alive():  # synchronous (or closed)
            if self.fn is None:
                self._setup()
            try:
                return self._probe(step, params, run_dir)
            finally:
                self.finished += 1
        self._check()
        self._queue.put((step, params, run_dir))
        return None

    @property
    def pending(self) -> int:
        """Checkpoints handed to this prober and not yet probed."""
        return self.submitted - self.finished

    @property
    def alive(self) -> bool:
        """Whether a background worker is still running without an error."""
        return self._queue is not None and self._thread.is_alive() and self._error is None

    def _probe(self, step: int, params, run_dir) -> dict:
        t = time.perf_counter()
        if self.params0 is None:
            if step == 0:
                self.params0 = params
            else:  # resumed run: the reference point is checkpoint 0
                from topicdyn.checkpoint import load_params
                self.params0 = jax.device_get(load_params(run_dir or self.path.parent, 0)[0])
        n = self.cfg.train.n_seeds
        finite = np.ones(n, bool)
        for x in jax.tree.leaves(params):  # per seed (the leading axis of every leaf)
            finite &= np.isfinite(np.asarray(x).reshape(n, -1)).all(1)
        row = {"step": int(step)}
        if all(finite):
            out = jax.device_get(self.fn(params, self.params0))
            row.update({k: [float(x) for x in np.atleast_1d(v)] for k, v in sorted(out.items())})
        else:  # statistics of non-finite parameters raise (SVD) or mean nothing: say so
            from topicdyn.claims import NON_FINITE
            row[NON_FINITE] = [bool(not f) for f in finite]
        append_jsonl(self.path, row)
        crash_point("probe.written", step)
        self.probe_seconds.append(time.perf_counter() - t)
        self.seconds += self.probe_seconds[-1]
        return row

    def _work(self):
        # the last device: with several CPU devices (topicdyn.process.configure_host_devices)
        # a single run trains on the first, so the probes run beside it, not queued behind it
        with jax.default_device(jax.devices()[-1]):
            self._loop()

    def _loop(self):
        try:
            self._setup()
        except BaseException as e:  # reported by the next call or close()
            self._error = e
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._error is None:
                try:
                    self._probe(*item)
                except BaseException as e:
                    self._error = e
            self.finished += 1

    def _check(self):
        if self._error is not None:
            err, self._error = self._error, None
            raise err  # as raised in the worker (an OSError stays one, for the CLI's message)

    def close(self, raise_errors: bool = True):
        """Wait until every queued checkpoint is probed; raise if one failed (unless not
        raise_errors: closing after another error). Closing twice is harmless."""
        if self._queue is not None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        if raise_errors:
            self._check()


def probe_run(run_dir: str | Path, names=None) -> Path:
    """Re-probe every stored checkpoint of a run; rewrites probes.jsonl. Returns its path.
    With `names` (a subset of the probes) the other probes' values already in probes.jsonl are
    kept: the named probes' values are replaced, nothing else is lost."""
    from topicdyn.checkpoint import list_checkpoints, load_params
    from topicdyn.config import load_config

    run_dir = Path(run_dir)
    cfg = load_config(run_dir)
    prober = CheckpointProber(cfg, run_dir, names, background=False)
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
    if names is not None and final.exists():
        _merge_into(read_jsonl(final), tmp, names)
    tmp.replace(final)
    return final


def _merge_into(old_rows: list[dict], tmp: Path, names) -> None:
    """Rewrite tmp's rows on top of the old rows of the same step: the old values of the probes
    re-run (`names`) go, every other old value stays."""
    from topicdyn.jsonl import write_atomic
    import json

    old = {r["step"]: r for r in old_rows}
    prefixes = tuple(f"{n}/" for n in names)
    rows = []
    for r in read_jsonl(tmp):
        base = {k: v for k, v in old.get(r["step"], {}).items() if not k.startswith(prefixes)}
        rows.append({**base, **r})
    write_atomic(tmp, "".join(json.dumps(r) + "\n" for r in rows))


def read_probes(run_dir: str | Path) -> list[dict]:
    return read_jsonl(Path(run_dir) / "probes.jsonl")
