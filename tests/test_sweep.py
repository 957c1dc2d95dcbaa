"""Sweeps: spec validation, vmapped hyper-parameters vs single runs, sharding over 4 fake CPU
devices vs one device, resume (finished points skipped), summary and figures."""
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from topicdyn.checkpoint import load_params
from topicdyn.cli import main
from topicdyn.config import ConfigError, preset
from topicdyn.run import RunInterrupted, read_metrics, train
from topicdyn.sweep import load_spec, parse_spec, read_summary, run_sweep
from topicdyn.training import init_state

ROOT = Path(__file__).resolve().parents[1]
TINY = ["data.T=3", "data.v=2", "data.N_min=8", "data.N_max=12", "data.batch_size=4",
        "train.steps=30", "train.log_every=10", "train.ckpt_steps=[10,20]", "train.chunk=8"]
# three points of one group (lr and init scale on the member axis) x 2 seeds = 6 members,
# padded to 8 on 4 devices
POINTS = [{"optim.lr": 0.01, "model.init_scale": 0.02},
          {"optim.lr": 0.03, "model.init_scale": 0.02},
          {"optim.lr": 0.01, "model.init_scale": 0.1}]


@pytest.fixture(autouse=True)
def _no_predictions(monkeypatch):
    """These tests compare sweep programs with single runs; the reduced-dynamics predictions
    (one compiled program per point, tests/test_reduced.py) would only add minutes here."""
    monkeypatch.setenv("TOPICDYN_PREDICT", "0")


def _spec(out, **kw) -> dict:
    return {"name": "t", "preset": "F", "base": TINY, "points": POINTS, "seeds": 2,
            "probes": False, "out": str(out), **kw}


def _leaves(params):
    return {jax.tree_util.keystr(p): np.asarray(x)
            for p, x in jax.tree_util.tree_leaves_with_path(params)}


@pytest.fixture(scope="module")
def vmapped(tmp_path_factory):
    """The 3-point sweep on one device: (spec, report)."""
    spec = parse_spec(_spec(tmp_path_factory.mktemp("sweep") / "one"))
    return spec, run_sweep(spec, progress=False, log=lambda s: None)


# ---- validation -----------------------------------------------------------------------------
@pytest.mark.parametrize("change,field", [
    ({"grid": {"data.nosuch": [1, 2]}}, "data.nosuch"),
    ({"grid": {}}, "spec.grid"),
    ({"grid": {"data.v": []}}, "spec.grid.data.v"),
    ({"grid": {"data.k": [1, 5]}, "base": TINY + ["data.prior=k_topics"]}, "data.k"),
    ({"grid": {"preset": ["F", "V"]}, "base": TINY + ["model.d_model=8"]}, "model.d_model"),
    ({"grid": {"data.N_min,data.N_max": [[8, 12], [9]]}}, "data.N_min,data.N_max"),
    ({"grid": {"train.n_seeds": [1, 2]}}, "train.n_seeds"),
    ({"grid": {"optim.lr": [0.01, 0.01]}}, "same config"),
    ({"seeds": 0}, "spec.seeds"),
    ({"sedes": 3}, "sedes"),
    ({"plots": [{"metric": "final_loss", "x": "data.T"}]}, "data.T"),
])
def test_bad_specs_fail_before_training(tmp_path, change, field):
    raw = {k: v for k, v in _spec(tmp_path / "out").items() if k != "points"}
    raw.setdefault("grid", {"optim.lr": [0.01]})
    raw.update(change)
    with pytest.raises(ConfigError, match=field.replace(".", r"\.").replace("[", r"\[")):
        parse_spec(raw)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(raw))
    assert main(["sweep", str(path), "--no-progress"]) == 2
    assert not (tmp_path / "out").exists()  # nothing was created, let alone trained


def test_cli_bad_spec_is_one_line_exit_2(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"grid": {"model.init_scale": [-1.0]}, "base": TINY}))
    r = subprocess.run([sys.executable, "-m", "topicdyn", "sweep", str(path)], cwd=tmp_path,
                       capture_output=True, text=True)
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "model.init_scale" in lines[0], r.stderr
    assert not (tmp_path / "runs").exists()


def test_yaml_spec_and_keep_probability_axis(tmp_path):
    """A YAML spec; the keep probability is swept as a tied axis with p_replace_mask (the three
    proportions must sum to 1); a broken YAML file is one line, exit 2."""
    path = tmp_path / "k.yaml"
    path.write_text("preset: A\nbase: %s\nseeds: 1\ngrid:\n"
                    "  mask.p_replace_mask,mask.p_keep: [[0.9, 0.0], [0.8, 0.1]]\n"
                    % json.dumps(TINY))
    spec = load_spec(path)
    assert [(p.cfg.mask.p_replace_mask, p.cfg.mask.p_keep) for p in spec.points] == \
        [(0.9, 0.0), (0.8, 0.1)]
    bad = tmp_path / "bad.yaml"
    bad.write_text("grid: {data.T: [2, 3]\n")
    r = subprocess.run([sys.executable, "-m", "topicdyn", "sweep", str(bad)], cwd=tmp_path,
                       capture_output=True, text=True)
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "YAML" in lines[0], r.stderr


def test_python_spec_tied_axes_and_grouping(tmp_path):
    path = tmp_path / "s.py"
    path.write_text("SPEC = {'preset': 'V', 'base': %r, 'seeds': 3,\n"
                    "        'grid': {'data.N_min,data.N_max': [[8, 12], [20, 24]],\n"
                    "                 'optim.lr': [0.01, 0.1], 'preset': ['V', 'E']}}\n" % TINY)
    spec = load_spec(path)
    assert spec.name == "s" and spec.out == Path("runs/sweeps/s") and len(spec.points) == 8
    p = spec.points[-1]
    assert (p.cfg.data.N_min, p.cfg.data.N_max, p.cfg.optim.lr, p.cfg.preset) == (20, 24, 0.1, "E")
    assert p.cfg.train.n_seeds == 3 and p.name == "N_min=20_N_max=24_lr=0.1_preset=E"
    assert p.cfg.model.embedding == "trained" and spec.points[0].cfg.model.embedding == "onehot"
    from topicdyn.sweep import group_points
    groups = group_points(spec.points)  # lr is vmapped; N and the preset change the program
    assert [len(g) for g in groups] == [2, 2, 2, 2]
    assert all(len({q.cfg.optim.lr for q in g}) == 2 for g in groups)
    assert [len(g) for g in group_points(spec.points, max_members=3)] == [1] * 8


# ---- per-member hyper-parameters ------------------------------------------------------------
def test_init_scale_on_member_axis_is_bit_identical():
    cfg = preset("F", TINY)
    seeds = np.array([0, 1, 0], np.int32)
    scales = np.array([0.02, 0.02, 0.3], np.float32)
    got = init_state(cfg, seeds, scales).params
    for i in (1, 2):
        one = init_state(preset("F", TINY + [f"model.init_scale={float(scales[i])}"]),
                         seeds[i:i + 1]).params
        for k in one:
            assert np.array_equal(np.asarray(got[k][i]), np.asarray(one[k][0])), k


def test_vmapped_lr_and_init_points_equal_single_runs(vmapped, tmp_path):
    spec, report = vmapped
    assert report["groups"] == 1 and report["devices"] == 1  # one compiled program
    rows = read_summary(spec.out)
    assert len(rows) == len(POINTS) * 2
    for p in spec.points[1:]:  # one point differing in lr, one in init scale
        single = train(preset("F", TINY + [f"{k}={v}" for k, v in p.values.items()]
                              + ["train.n_seeds=2"]), tmp_path / p.name, progress=False)
        a, b = _leaves(load_params(spec.point_dir(p))[0]), _leaves(load_params(single)[0])
        for k in a:  # batched matmuls may round differently in the last bit (test_train)
            np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-5)
        ms, m1 = read_metrics(spec.point_dir(p)), read_metrics(single)
        assert [r["step"] for r in ms] == [r["step"] for r in m1]
        np.testing.assert_allclose([r["loss"] for r in ms], [r["loss"] for r in m1], rtol=1e-4)
        assert set(ms[-1]) == set(m1[-1]) and set(ms[-1]["grad_norm"]) == set(m1[-1]["grad_norm"])
        summ = [r for r in rows if r["point"] == p.name]
        assert [r["seed"] for r in summ] == [0, 1]
        np.testing.assert_allclose([r["final_loss"] for r in summ], m1[-1]["loss"], rtol=1e-4)


def test_mask_probabilities_on_member_axis_equal_single_runs(tmp_path):
    """Points differing only in mask probabilities (p_mask; keep vs MASK) are one program; each
    equals its standalone run, and its probes use its own masking of the evaluation set."""
    points = [{"mask.p_mask": 0.15},
              {"mask.p_mask": 0.3},
              {"mask.p_mask": 0.15, "mask.p_replace_mask": 0.9, "mask.p_keep": 0.0}]
    spec = parse_spec({"name": "m", "preset": "F", "base": TINY, "points": points, "seeds": 1,
                       "out": str(tmp_path / "m")})
    report = run_sweep(spec, progress=False, log=lambda s: None)
    assert report["groups"] == 1
    for p in spec.points:
        single = train(preset("F", TINY + [f"{k}={v}" for k, v in p.values.items()]),
                       tmp_path / p.name, progress=False)
        a, b = _leaves(load_params(spec.point_dir(p))[0]), _leaves(load_params(single)[0])
        for k in a:  # the program's loss buffers fit the largest p_mask: last-bit rounding
            np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-5)
        la = [r["loss"] for r in read_metrics(spec.point_dir(p))]
        np.testing.assert_allclose(la, [r["loss"] for r in read_metrics(single)], rtol=1e-4)
        # probes: the eval set masked as this point masks it (= probing the standalone run)
        from topicdyn.probes.runner import probe_run, read_probes
        probe_run(single)
        got, want = read_probes(spec.point_dir(p)), read_probes(single)
        assert [r["step"] for r in got] == [r["step"] for r in want]
        for k in ("loss/eval_loss", "loss/bayes_query", "loss/pop_loss", "attention/ratio_all"):
            np.testing.assert_allclose(got[-1][k], want[-1][k], rtol=1e-4, err_msg=k)
    # each point's theory is its own masking's (the Bayes floor moves with p_mask and p_keep)
    floors = {json.loads((spec.point_dir(p) / "theory.json").read_text())["floors"][
        "bayes/query"]["loss"] for p in spec.points}
    assert len(floors) == 3
    # the members really train on differently masked batches (at step 1 a small-init model's
    # loss does not yet tell [MASK] from a kept token: compare whole trajectories)
    runs = {tuple(r["loss"][0] for r in read_metrics(spec.point_dir(p))) for p in spec.points}
    assert len(runs) == 3


# ---- sharding -------------------------------------------------------------------------------
def test_sharded_over_4_devices_equals_one_device(vmapped, tmp_path):
    spec, _ = vmapped
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(_spec(tmp_path / "four")))
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-m", "topicdyn", "sweep", str(path), "--no-progress"],
                       cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((tmp_path / "four" / "sweep.json").read_text())["devices"] == 4
    for p in spec.points:
        d4 = tmp_path / "four" / "points" / p.name
        a, b = _leaves(load_params(d4)[0]), _leaves(load_params(spec.point_dir(p))[0])
        for k in a:  # per-device programs batch fewer members: last-bit rounding (test_train)
            np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-5)
        la = [r["loss"] for r in read_metrics(d4)]
        lb = [r["loss"] for r in read_metrics(spec.point_dir(p))]
        np.testing.assert_allclose(la, lb, rtol=1e-5)


# ---- resume ---------------------------------------------------------------------------------
def test_resume_skips_finished_and_resumes_interrupted(tmp_path):
    out = tmp_path / "sw"
    base = {"name": "r", "preset": "F", "base": TINY, "seeds": 1, "out": str(out)}
    quiet = {"progress": False, "log": lambda s: None}
    first = run_sweep(parse_spec({**base, "grid": {"data.T": [2]}}), **quiet)
    assert first["points"] == {"T=2": "trained from 0"}
    done = out / "points" / "T=2"
    snapshot = {f.name: (f.read_bytes(), f.stat().st_mtime_ns) for f in done.iterdir()
                if f.is_file()}
    spec = parse_spec({**base, "grid": {"data.T": [2, 3]}})  # the grid grows by one point
    with pytest.raises(RunInterrupted):
        run_sweep(spec, stop_at=20, **quiet)
    assert max(r["step"] for r in read_metrics(out / "points" / "T=3")) == 20
    again = run_sweep(spec, **quiet)
    assert again["points"] == {"T=2": "skipped", "T=3": "trained from 20"}
    assert {f.name: (f.read_bytes(), f.stat().st_mtime_ns) for f in done.iterdir()
            if f.is_file()} == snapshot  # the finished point was not touched
    # the resumed point ends where an uninterrupted standalone run does
    ref = train(preset("F", TINY + ["data.T=3"]), tmp_path / "ref", progress=False)
    res = out / "points" / "T=3"
    assert (res / "metrics.jsonl").read_text() == (ref / "metrics.jsonl").read_text()
    a, b = _leaves(load_params(res)[0]), _leaves(load_params(ref)[0])
    assert all(np.array_equal(a[k], b[k]) for k in a)
    probes = [json.loads(x)["step"] for x in (res / "probes.jsonl").read_text().splitlines()]
    assert probes == [0, 10, 20, 30]  # one row per checkpoint, none lost or doubled
    assert (res / "verdicts.jsonl").exists() and (res / "theory.json").exists()
    rows = read_summary(out)
    assert [r["point"] for r in rows] == ["T=2", "T=3"]
    assert rows[1]["theory/bayes/query"] > 0 and "blocks/value_gap" in rows[1]
    assert rows[1]["final_loss"] == read_metrics(ref)[-1]["loss"][0]
    assert any(f.suffix == ".png" for f in (out / "figures").iterdir())
    assert run_sweep(spec, **quiet)["points"] == {"T=2": "skipped", "T=3": "skipped"}
    # --publish copies the summary table and every figure (what results/sweeps/ commits)
    f = tmp_path / "r.json"
    f.write_text(json.dumps({**base, "grid": {"data.T": [2, 3]}}))
    dest = tmp_path / "published"
    (dest).mkdir()
    (dest / "mine.png").write_bytes(b"not topicdyn's")
    assert main(["sweep", str(f), "--summary-only", "--publish", str(dest)]) == 0
    pngs = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert sorted(p.name for p in dest.glob("*.png")) == sorted(pngs + ["mine.png"]) and pngs
    assert (dest / "sweep_summary.csv").read_bytes() == (out / "sweep_summary.csv").read_bytes()
    assert (dest / "mine.png").read_bytes() == b"not topicdyn's"  # never touched
    # a figure an earlier publish wrote and the sweep no longer makes is removed; nothing else
    manifest = json.loads((dest / ".topicdyn-published.json").read_text())
    (dest / "gone.png").write_bytes(b"ours once")
    (dest / ".topicdyn-published.json").write_text(json.dumps(
        {"files": manifest["files"] + ["gone.png"]}))
    assert main(["sweep", str(f), "--summary-only", "--publish", str(dest)]) == 0
    assert not (dest / "gone.png").exists() and (dest / "mine.png").exists()
    # a file of a published name that topicdyn did not write is refused, not overwritten
    other = tmp_path / "other"
    other.mkdir()
    (other / pngs[0]).write_bytes(b"someone else's")
    assert main(["sweep", str(f), "--summary-only", "--publish", str(other)]) == 2
    assert (other / pngs[0]).read_bytes() == b"someone else's"


def test_two_processes_jax_distributed_equal_one_device(vmapped, tmp_path):
    """Two processes x 2 fake devices (jax.distributed on localhost, gloo collectives): the
    member axis spans 4 devices over 2 hosts; process 0 writes everything."""
    import socket
    spec, _ = vmapped
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(_spec(tmp_path / "mp")))
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_PLATFORMS="cpu")
    procs = [subprocess.Popen(
        [sys.executable, "-m", "topicdyn", "sweep", str(path), "--no-progress",
         "--coordinator", f"localhost:{port}", "--num-processes", "2", "--process-id", str(i)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    assert json.loads((tmp_path / "mp" / "sweep.json").read_text())["devices"] == 4
    for p in spec.points:
        a = _leaves(load_params(tmp_path / "mp" / "points" / p.name)[0])
        b = _leaves(load_params(spec.point_dir(p))[0])
        for k in a:  # per-device programs batch fewer members: last-bit rounding (test_train)
            np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-5)
