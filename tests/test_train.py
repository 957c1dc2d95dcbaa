"""Training: frozen groups, determinism, resume, the ensemble axis, and each preset learning."""
import json

import jax
import numpy as np
import pytest

from topicdyn.checkpoint import list_checkpoints, load_params
from topicdyn.config import preset
from topicdyn.run import RunInterrupted, read_metrics, train

# small enough to train in about a second: V = 12 content words, vocab 16
TINY = ["data.T=3", "data.v=4", "data.N_min=10", "data.N_max=20", "data.batch_size=8",
        "train.steps=40", "train.log_every=10", "train.ckpt_log_points=4",
        "train.ckpt_linear_from=10", "train.ckpt_every=10", "train.chunk=8"]


def tiny(name="F", *extra):
    return preset(name, TINY + list(extra))


def _leaves(params):
    return {jax.tree_util.keystr(p): np.asarray(x)
            for p, x in jax.tree_util.tree_leaves_with_path(params)}


@pytest.mark.parametrize("name,frozen,trained", [
    ("V", ["E", "WQ", "WK", "W_dec"], ["WV"]),
    ("A", ["E", "WV", "W_dec"], ["WQ", "WK"]),
    ("E", ["WQ", "WK", "WV", "W_dec"], ["E"]),
])
def test_frozen_params_bit_identical_trained_move(tmp_path, name, frozen, trained):
    run = train(tiny(name), tmp_path / "run", progress=False)
    p0 = _leaves(load_params(run, 0)[0])
    p1 = _leaves(load_params(run)[0])
    for k in p0:
        if any(f"['{f}']" in k for f in frozen):
            assert np.array_equal(p0[k], p1[k]), k  # bitwise, not approximately
        if any(f"['{t}']" in k for t in trained):
            assert np.abs(p1[k] - p0[k]).max() > 1e-3, k


def test_optim_freeze_and_scheduled_unfreeze(tmp_path):
    cfg = tiny("F", "optim.freeze=[\"decoder\"]", "optim.unfreeze_at=[[\"query\", 20]]")
    run = train(cfg, tmp_path / "run", progress=False)
    p0, p10, p40 = (_leaves(load_params(run, s)[0]) for s in (0, 10, 40))
    assert np.array_equal(p0["['W_dec']"], p40["['W_dec']"])
    assert np.array_equal(p0["['WQ']"], p10["['WQ']"])  # still frozen before step 20
    assert not np.array_equal(p10["['WQ']"], p40["['WQ']"])  # moves after it
    assert not np.array_equal(p0["['WK']"], p10["['WK']"])


def test_same_seed_identical_different_seed_differs(tmp_path):
    a = train(tiny("F"), tmp_path / "a", progress=False)
    b = train(tiny("F"), tmp_path / "b", progress=False)
    c = train(tiny("F", "train.seed=1"), tmp_path / "c", progress=False)
    assert (a / "metrics.jsonl").read_text() == (b / "metrics.jsonl").read_text()
    assert [r["sha256"] for r in list_checkpoints(a)] == [r["sha256"] for r in list_checkpoints(b)]
    assert read_metrics(a)[-1]["loss"] != read_metrics(c)[-1]["loss"]


def test_resume_gives_identical_params_and_metrics(tmp_path):
    full = train(tiny("F"), tmp_path / "full", progress=False)
    cut = tmp_path / "cut"
    with pytest.raises(RunInterrupted):
        train(tiny("F"), cut, stop_at=20, progress=False)
    assert max(r["step"] for r in read_metrics(cut)) == 20
    train(tiny("F"), cut, resume=True, progress=False)
    assert (full / "metrics.jsonl").read_text() == (cut / "metrics.jsonl").read_text()
    pf, pc = _leaves(load_params(full)[0]), _leaves(load_params(cut)[0])
    assert all(np.array_equal(pf[k], pc[k]) for k in pf)
    assert list_checkpoints(full) == list_checkpoints(cut)


def test_ensemble_member_equals_single_run(tmp_path):
    ens = train(tiny("F", "train.n_seeds=3"), tmp_path / "ens", progress=False)
    single = train(tiny("F", "train.seed=2"), tmp_path / "one", progress=False)
    pe, ps = _leaves(load_params(ens)[0]), _leaves(load_params(single)[0])
    for k in pe:
        assert pe[k].shape[0] == 3 and ps[k].shape[0] == 1
        # batched and unbatched matmuls may round differently in the last bit; 40 Adam steps
        # amplify that to at most ~1e-5 relative, far below any seed-to-seed difference (~1)
        np.testing.assert_allclose(pe[k][2], ps[k][0], rtol=1e-4, atol=1e-5)
    le = np.array([r["loss"][2] for r in read_metrics(ens)])
    ls = np.array([r["loss"][0] for r in read_metrics(single)])
    np.testing.assert_allclose(le, ls, rtol=1e-4)
    assert abs(pe["['WV']"][0] - pe["['WV']"][2]).max() > 1e-3  # members differ


@pytest.mark.parametrize("name", ["E", "V", "A", "F"])
def test_each_preset_lowers_the_loss(tmp_path, name):
    # the loss probe evaluates every checkpoint on the same fixed documents, so the comparison
    # is paired; alpha=1 mixes topics within a document, so attention (A) has something to gain
    # (the theory engine puts A's best gain over uniform attention here at about 0.05 nats)
    from topicdyn.probes.runner import CheckpointProber, read_probes
    cfg = preset(name, TINY[:5] + ["data.alpha=1.0", "train.steps=150", "train.log_every=50",
                                    "optim.lr=0.05", "train.ckpt_steps=[150]"])
    run = tmp_path / "run"
    train(cfg, run, progress=False, on_checkpoint=CheckpointProber(cfg, run, ("loss",)))
    first, last = (r["loss/eval_loss"][0] for r in read_probes(run))
    assert last < first - (0.02 if name == "A" else 0.05), (first, last)


def test_run_dir_layout_and_config_roundtrip(tmp_path):
    run = train(tiny("V"), tmp_path / "run", progress=False)
    saved = json.loads((run / "config.json").read_text())
    assert saved["preset"] == "V" and saved["train"]["steps"] == 40
    steps = [r["step"] for r in list_checkpoints(run)]
    assert steps[0] == 0 and steps[-1] == 40 and steps == sorted(set(steps))
    row = read_metrics(run)[-1]
    assert set(row["grad_norm"]) == {"value"}  # only trained groups
    assert set(row["param_norm"]) >= {"embedding", "value", "decoder"}


def test_sampling_on_a_second_device_gives_the_same_run(tmp_path):
    """With two CPU devices a single-seed run samples its batches on the second one while the
    first trains (topicdyn.loop.training_devices): the metrics and checkpoints are bit-identical
    to the one-device run."""
    import os
    import subprocess
    import sys

    tiny = ["data.T=3", "data.v=4", "data.N_min=10", "data.N_max=20", "data.batch_size=8",
            "train.steps=40", "train.log_every=10", "train.ckpt_log_points=3",
            "train.ckpt_linear_from=10", "train.ckpt_every=20"]
    runs = {}
    for n in (1, 2):
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}",
                   JAX_PLATFORMS="cpu")
        out = tmp_path / f"dev{n}"
        r = subprocess.run([sys.executable, "-m", "topicdyn", "train", "--preset", "F", *tiny,
                            "--out", str(out), "--no-progress", "--no-probes"], env=env,
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-2000:]
        runs[n] = out
    assert (runs[1] / "metrics.jsonl").read_text() == (runs[2] / "metrics.jsonl").read_text()
    assert ([c["sha256"] for c in list_checkpoints(runs[1])]
            == [c["sha256"] for c in list_checkpoints(runs[2])])


def test_an_odd_ensemble_over_two_devices_probes_its_own_members(tmp_path):
    """Three seeds over two CPU devices: the member axis is padded to four, and the probes (and
    every file) see the three members only, equal to the one-device run to float rounding."""
    import os
    import subprocess
    import sys

    tiny = ["data.T=3", "data.v=4", "data.N_min=10", "data.N_max=20", "data.batch_size=8",
            "train.steps=20", "train.log_every=10", "train.ckpt_steps=[0,10,20]",
            "train.n_seeds=3"]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_PLATFORMS="cpu")
    two = tmp_path / "dev2"
    r = subprocess.run([sys.executable, "-m", "topicdyn", "train", "--preset", "F", *tiny,
                        "--out", str(two), "--no-progress", "--no-figures"], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    one = train(preset("F", tiny), tmp_path / "dev1", progress=False, probes=True)

    def rows(run, name):
        return [json.loads(x) for x in (run / name).read_text().splitlines()]

    for name in ("metrics.jsonl", "probes.jsonl"):
        a, b = rows(two, name), rows(one, name)
        assert [x["step"] for x in a] == [x["step"] for x in b]
        for ra, rb in zip(a, b):
            for k, v in rb.items():
                if isinstance(v, list) and v and isinstance(v[0], float):
                    assert len(ra[k]) == 3, (name, k)
                    np.testing.assert_allclose(ra[k], v, rtol=1e-4, atol=1e-6, err_msg=k)


def test_a_new_run_may_find_its_prediction_already_written(tmp_path):
    """`topicdyn train` starts the reduced prediction in a background thread before training;
    from a cache it can write predicted.json before train() checks that the directory is new,
    which must not make the run refuse its own directory."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "predicted.json").write_text("{}\n")
    train(preset("V", ["data.T=3", "data.v=4", "data.N_min=10", "data.N_max=20",
                       "data.batch_size=8", "train.steps=4", "train.ckpt_steps=[0,4]"]),
          run, progress=False)
    assert (run / "metrics.jsonl").exists()
    with pytest.raises(Exception, match="already holds a run"):
        train(preset("V", ["train.steps=4"]), run, progress=False)
