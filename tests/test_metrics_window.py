"""metrics.jsonl: a row's loss is the mean over a window fixed by its step alone (the steps
since the last multiple of train.log_every), so runs of different lengths agree, and a resume
from a checkpoint between two multiples replays the window to the same rows."""
import json

import numpy as np
import pytest

from topicdyn.config import preset
from topicdyn.run import RunInterrupted, train

TINY = ["data.T=3", "data.v=4", "data.N_min=10", "data.N_max=20", "data.batch_size=8",
        "train.chunk=16"]


def _rows(run):
    return {r["step"]: r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}


def test_a_200_and_a_5000_step_run_log_the_same_loss_at_step_200(tmp_path):
    short = train(preset("F", TINY + ["train.steps=200"]), tmp_path / "short", progress=False)
    long_dir = tmp_path / "long"
    with pytest.raises(RunInterrupted):  # the 5000-step run, stopped at its checkpoint 222
        train(preset("F", TINY + ["train.steps=5000"]), long_dir, stop_at=200, progress=False)
    a, b = _rows(short), _rows(long_dir)
    assert max(b) == 222 and 200 in a and 200 in b
    for s in (50, 100, 150, 200):  # the grid rows both runs have: identical, key by key
        assert a[s] == b[s], s
    # every step logged (log_every=1): its loss_last is that step's loss; the windows are
    # means of those, computed here independently
    every = train(preset("F", TINY + ["train.steps=230", "train.log_every=1"]),
                  tmp_path / "every", progress=False)
    per_step = {s: r["loss_last"] for s, r in _rows(every).items()}
    for s, lo in ((200, 150), (150, 100), (222, 200), (20, 0), (1, 0)):
        want = np.mean([per_step[t] for t in range(lo + 1, s + 1)], axis=0)
        np.testing.assert_allclose(b[s]["loss"], want, rtol=2e-6)
        assert b[s]["loss_window"] == s - lo


def test_resume_between_grid_rows_replays_the_window(tmp_path):
    """Checkpoints 15 and 25 lie between the rows at multiples of 10: a resume from 25 replays
    from checkpoint 15 (from 15 it would replay from 5; tests/test_faults.py resumes from 5,
    replayed from 0) and writes the rows of an uninterrupted run."""
    cfg = preset("F", TINY + ["train.steps=40", "train.log_every=10",
                              "train.ckpt_steps=[0,5,15,25,30,40]", "train.n_seeds=2"])
    full = train(cfg, tmp_path / "full", progress=False)
    cut = tmp_path / "cut"
    with pytest.raises(RunInterrupted):
        train(cfg, cut, stop_at=25, progress=False)
    assert max(_rows(cut)) == 25
    train(cfg, cut, resume=True, progress=False)
    assert (cut / "metrics.jsonl").read_text() == (full / "metrics.jsonl").read_text()
    assert (cut / "checkpoints.jsonl").read_text() == (full / "checkpoints.jsonl").read_text()
    assert _rows(full)[15]["loss_window"] == 5 and _rows(full)[20]["loss_window"] == 10
