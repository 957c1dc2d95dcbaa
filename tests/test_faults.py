"""Faults: kills at any instant, damaged files, two writers, divergence, a full disk.

Every interrupted run is completed with `topicdyn train --resume` and compared file by file with
an uninterrupted run of the same config (params hashes, metrics, probes, verdicts, theory); no
command may print a traceback. Kills are SIGKILLs: injected at named points of the write order
(topicdyn.faults.crash_point, e.g. between orbax finalising a checkpoint and its index row) and
sent from outside at timed instants.
"""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import pytest

from topicdyn.cli import main

TINY = ["--preset", "F", "--no-progress", "--no-figures", "data.T=3", "data.v=3", "data.N_min=6", "data.N_max=8",
        "data.batch_size=8", "train.steps=40", "train.log_every=10", "train.chunk=5",
        "train.ckpt_steps=[0,5,10,20,30,40]", "train.n_seeds=2"]
COMPARED = ("config.json", "metrics.jsonl", "checkpoints.jsonl", "probes.jsonl",
            "verdicts.jsonl", "theory.json")


# the subprocesses share JAX's persistent compilation cache: the same programs are compiled
# once, not once per process (a cached executable is the same program: results are identical)
CACHE = {"JAX_COMPILATION_CACHE_DIR": tempfile.mkdtemp(prefix="topicdyn-jax-cache-"),
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
         "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
# the subprocesses see as many XLA devices as this process: members split over more devices batch
# fewer members per program and can differ in the last bit (README, Performance), and several
# tests here compare a run of this process with one of a subprocess
_DEVICES = {"XLA_FLAGS": " ".join(
    [os.environ.get("XLA_FLAGS", ""), f"--xla_force_host_platform_device_count={jax.device_count()}"]
).strip()} if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", "") else {}
ENV = {**os.environ, **CACHE, **_DEVICES}


def _cli(*args, env=None, timeout=300):
    r = subprocess.run([sys.executable, "-m", "topicdyn", *args], capture_output=True, text=True,
                       env={**ENV, **(env or {})}, timeout=timeout)
    assert "Traceback" not in r.stderr + r.stdout, r.stderr[-3000:]
    return r


def _files(run: Path) -> dict:
    return {f: (run / f).read_text() for f in COMPARED}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run = tmp_path_factory.mktemp("ref") / "run"
    t = time.perf_counter()
    r = _cli("train", "--out", str(run), *TINY)
    assert r.returncode == 0, r.stderr[-2000:]
    return run, _files(run), time.perf_counter() - t


def _resume_to_the_end(run: Path, env=None) -> None:
    r = _cli("train", "--resume", str(run), "--no-progress", "--no-figures", env=env)
    assert r.returncode == 0, r.stderr[-2000:]


def _assert_same(run: Path, want: dict) -> None:
    got = _files(run)
    for f in COMPARED:
        assert got[f] == want[f], f"{run.name}: {f} differs from the uninterrupted run"
    assert not (run / ".topicdyn.lock").exists()


CRASHES = ["checkpoint.before_save:0", "checkpoint.saved:0", "checkpoint.indexed:0",
           "probe.written:0", "checkpoint.saved:5", "checkpoint.before_save:10",
           "metrics.written:10", "checkpoint.indexed:20", "probe.written:20",
           "metrics.written:30", "checkpoint.saved:40", "checkpoint.indexed:40"]


def test_sigkill_at_every_point_of_the_write_order_resumes_bit_identical(reference, tmp_path):
    """One run killed at each point in turn (every resume is killed at the next point), then
    resumed to the end: the same files as the uninterrupted run."""
    _, want, _ = reference
    run = tmp_path / "run"
    for i, point in enumerate(CRASHES):
        env = {"TOPICDYN_CRASH_AT": point}
        args = ("train", "--out", str(run), *TINY) if i == 0 else (
            "train", "--resume", str(run), "--no-progress", "--no-figures")
        if i > 0 and not (run / "config.json").exists():
            args = ("train", "--out", str(run), *TINY)
        r = _cli(*args, env=env)
        assert r.returncode == -signal.SIGKILL, (point, r.returncode, r.stderr[-1500:])
    _resume_to_the_end(run)
    _assert_same(run, want)


@pytest.mark.parametrize("fraction", [0.35, 0.7])
def test_sigkill_from_outside_at_a_timed_instant(reference, tmp_path, fraction):
    _, want, seconds = reference
    run = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-m", "topicdyn", "train", "--out", str(run), *TINY],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)
    time.sleep(seconds * fraction)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert "Traceback" not in p.stderr.read()
    if not (run / "config.json").exists():  # killed before anything was written: start again
        assert _cli("train", "--out", str(run), *TINY).returncode == 0
    else:
        _resume_to_the_end(run)
    _assert_same(run, want)


def test_damaged_files_are_repaired_or_skipped_on_resume(reference, tmp_path):
    _, want, _ = reference
    run = tmp_path / "run"
    # killed once step 20's probe row and its checkpoint's index row are both written (the
    # prober and the checkpoint saver run beside training, in either order)
    r = _cli("train", "--out", str(run), *TINY,
             env={"TOPICDYN_CRASH_AT": "probe.written:20&checkpoint.indexed:20"})
    assert r.returncode == -signal.SIGKILL
    steps = lambda f: {json.loads(x)["step"] for x in (run / f).read_text().splitlines()}  # noqa
    latest = max(steps("checkpoints.jsonl") & steps("probes.jsonl"))  # where a resume starts
    assert latest == 20
    for f in ("metrics.jsonl", "checkpoints.jsonl", "probes.jsonl", "timing.jsonl"):
        with (run / f).open("a") as fh:
            fh.write('{"step": 3')  # a torn last line
    (run / "theory.json").write_text('{"floors": {"bayes/query": ')  # cut: computed again
    (run / "verdicts.jsonl").write_text("garbage\n")  # rewritten at the end of a run
    # that checkpoint damaged on disk: its bytes no longer match the hash
    damaged = max((p for p in (run / "checkpoints" / str(latest)).rglob("*") if p.is_file()),
                  key=lambda p: p.stat().st_size)
    damaged.write_bytes(b"\0" * damaged.stat().st_size)
    r = _cli("train", "--resume", str(run), "--no-progress", "--no-figures")
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"checkpoint {latest}" in r.stderr and "warning" in r.stderr, r.stderr
    # caught by the file manifest before orbax reads it (a failed read inside tensorstore
    # leaves its threads printing tracebacks)
    assert "damaged (its hash differs)" in r.stderr and "Traceback" not in r.stderr, r.stderr
    _assert_same(run, want)


def test_damaged_config_and_nothing_to_resume_are_one_line_errors(reference, tmp_path):
    run, _, _ = reference
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text('{"data": {"T": ')
    r = _cli("train", "--resume", str(bad))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    # a run whose checkpoints were deleted cannot be continued to the same result
    gone = tmp_path / "gone"
    r = _cli("train", "--out", str(gone), *TINY, env={"TOPICDYN_CRASH_AT": "metrics.written:30"})
    import shutil
    shutil.rmtree(gone / "checkpoints")
    (gone / "checkpoints.jsonl").unlink()
    r = _cli("train", "--resume", str(gone))
    assert r.returncode == 2 and "no intact checkpoint" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    # a damaged line in the middle of a file is named, not a traceback
    mid = tmp_path / "mid"
    shutil.copytree(run, mid)
    lines = (mid / "metrics.jsonl").read_text().splitlines()
    lines[1] = lines[1][:20]
    (mid / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    r = _cli("info", str(mid))
    assert r.returncode == 2 and "metrics.jsonl: line 2" in r.stderr, r.stderr


def test_a_second_writer_is_refused_and_a_stale_lock_taken_over(reference, tmp_path):
    _, want, _ = reference
    run = tmp_path / "run"
    slow = ["--preset", "F", "--no-progress", "--no-probes", "data.T=3", "data.v=3",
            "train.steps=100000", "train.ckpt_steps=[0,5]"]
    p = subprocess.Popen([sys.executable, "-m", "topicdyn", "train", "--out", str(run), *slow],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    try:
        for _ in range(600):
            if (run / "checkpoints.jsonl").exists():
                break
            time.sleep(0.1)
        r = _cli("train", "--resume", str(run))
        assert r.returncode == 2 and "in use by process" in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    finally:
        p.kill()
        p.wait()
    # the killed writer's lock is stale: the next resume takes it over and finishes
    other = tmp_path / "other"
    r = _cli("train", "--out", str(other), *TINY, env={"TOPICDYN_CRASH_AT": "checkpoint.saved:20"})
    assert json.loads((other / ".topicdyn.lock").read_text())["pid"] > 0
    _resume_to_the_end(other)
    _assert_same(other, want)


def test_divergence_stops_cleanly_with_the_last_good_checkpoint(tmp_path):
    run = tmp_path / "run"
    r = _cli("train", "--out", str(run), *TINY, "optim.lr=1e30")
    assert r.returncode == 3, r.stderr[-2000:]
    assert len(r.stderr.strip().splitlines()) == 1 and "diverged" in r.stderr
    info = json.loads((run / "diverged.json").read_text())
    ck = [json.loads(x)["step"] for x in (run / "checkpoints.jsonl").read_text().splitlines()]
    assert info["last_good_checkpoint"] == ck[-1] < info["step"]
    metrics = run / "metrics.jsonl"  # absent when it diverged before the first logging point
    rows = [json.loads(x) for x in metrics.read_text().splitlines()] if metrics.exists() else []
    import math
    assert all(math.isfinite(v) for row in rows for v in row["loss"])  # nothing NaN written
    from topicdyn.checkpoint import load_params
    import numpy as np
    import jax
    params, _ = load_params(run, ck[-1])
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))


@pytest.mark.parametrize("where", ["metrics", "orbax"])
def test_disk_full_is_one_line_and_resumable(reference, tmp_path, monkeypatch, capsys, where):
    """ENOSPC injected into a metrics append, or inside orbax's save (which wraps it)."""
    _, want, _ = reference
    import orbax.checkpoint as ocp

    import topicdyn.loop as loop

    run = tmp_path / "run"
    if where == "metrics":
        real = loop.append_jsonl

        def full(path, row):
            if path.name == "metrics.jsonl" and row["step"] == 20:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
            real(path, row)
        monkeypatch.setattr(loop, "append_jsonl", full)
    else:
        real_save = ocp.CheckpointManager.save

        def full(self, step, *a, **kw):
            if step == 20:
                raise ValueError(f"writing {run}/checkpoints/20 failed: [Errno 28] No space "
                                 "left on device")
            return real_save(self, step, *a, **kw)
        monkeypatch.setattr(ocp.CheckpointManager, "save", full)
    assert main(["train", "--out", str(run), *TINY]) == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and str(run) in err  # the path that failed
    monkeypatch.undo()
    assert main(["train", "--resume", str(run), "--no-progress", "--no-figures"]) == 0
    _assert_same(run, want)


def test_sweep_directory_lock_refuses_a_second_sweep(tmp_path):
    spec = tmp_path / "s.json"
    out = tmp_path / "sweep"
    spec.write_text(json.dumps({"name": "s", "preset": "V", "out": str(out), "seeds": 1,
                                "base": ["data.T=2", "data.v=2", "train.steps=5"],
                                "grid": {"optim.lr": [0.01]}}))
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from topicdyn.faults import DirLock; "
        f"DirLock({str(out)!r}).acquire(); print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "held"
        r = _cli("sweep", str(spec), "--no-progress")
        assert r.returncode == 2 and "in use by process" in r.stderr, r.stderr
        assert not (out / "points").exists()  # refused before anything was written
    finally:
        holder.kill()
        holder.wait()
    # the holder is dead: its lock is stale and the sweep takes it over
    r = _cli("sweep", str(spec), "--no-progress")
    assert r.returncode == 0, r.stderr[-2000:]
    assert not (out / ".topicdyn.lock").exists()


def test_probes_of_non_finite_params_record_it_and_verdicts_say_diverged(tmp_path):
    import jax
    import numpy as np

    from topicdyn.config import preset
    from topicdyn.probes.runner import CheckpointProber
    from topicdyn.training import ensemble_seeds, init_state
    from topicdyn.verdicts import judge

    cfg = preset("F", ["data.T=3", "data.v=3", "data.N_min=6", "data.N_max=8",
                       "train.n_seeds=2", "train.n_eval=4"])
    state = jax.device_get(init_state(cfg, ensemble_seeds(cfg)))
    bad = jax.tree.map(lambda x: np.where(np.arange(x.shape[0]).reshape(-1, *[1] * (x.ndim - 1))
                                          == 1, np.nan, x), state.params)

    class S:
        params = bad
    row = CheckpointProber(cfg, tmp_path, background=False)(0, S(), tmp_path)
    assert row["non_finite_params"] == [False, True] and len(row) == 2
    claims = judge(row, {}, cfg)
    assert claims and all(c["verdict"] == "diverged" for c in claims)


def test_background_saver_keeps_order_and_raises_a_failed_save_once():
    """BackgroundSaver: saves in submission order; a failed save's error comes back at the
    next save() (not lost, not raised twice), later saves are not attempted after it, and
    close() waits for what was queued."""
    import threading

    from topicdyn.checkpoint import BackgroundSaver

    done, gate = [], threading.Event()

    class Fake:
        def save(self, step, host):
            gate.wait(5)
            if step == 2:
                raise OSError(errno.ENOSPC, "No space left on device", f"checkpoints/{step}")
            done.append((step, host))

    saver, ck = BackgroundSaver(), Fake()
    for s in range(2):
        saver.save(ck, s, {"x": s})
    assert done == []  # queued, training goes on
    gate.set()
    saver.flush()
    assert done == [(0, {"x": 0}), (1, {"x": 1})]
    gate.clear()
    saver.save(ck, 2, {})
    saver.save(ck, 3, {"x": 3})  # queued behind the failing save: skipped
    gate.set()
    with pytest.raises(OSError, match="No space left"):
        saver.flush()
    assert [s for s, _ in done] == [0, 1]
    saver.flush()  # raised once
    saver.save(ck, 4, {"x": 4})
    saver.close()
    assert done[-1] == (4, {"x": 4})
    saver.close()  # twice is harmless
