"""The real entry point on a tiny config (like flax's lm1b test), and its error handling."""
import json
import subprocess
import sys

import pytest

from topicdyn.cli import main

TINY = ["data.T=3", "data.v=4", "data.N_min=10", "data.N_max=20", "data.batch_size=8",
        "train.steps=30", "train.log_every=10", "train.ckpt_log_points=3",
        "train.ckpt_linear_from=10", "train.ckpt_every=10", "train.chunk=8"]


def test_train_probe_info_end_to_end(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--preset", "V", "--out", str(run), "--no-progress"] + TINY) == 0
    out = capsys.readouterr().out
    assert "claims at the last checkpoint" in out and "block structure" in out
    assert "measured (se)" in out and " ± 0 " not in out  # one seed: no spread to show
    for f in ("config.json", "metrics.jsonl", "probes.jsonl", "verdicts.jsonl", "theory.json",
              "checkpoints.jsonl"):
        assert (run / f).stat().st_size > 0, f
    probes = [json.loads(x) for x in (run / "probes.jsonl").read_text().splitlines()]
    ckpts = [json.loads(x)["step"] for x in (run / "checkpoints.jsonl").read_text().splitlines()]
    assert [r["step"] for r in probes] == ckpts  # one probe row per checkpoint
    assert main(["info", str(run)]) == 0
    assert "checkpoints: " in capsys.readouterr().out
    before = (run / "probes.jsonl").read_text()
    assert main(["probe", str(run)]) == 0  # offline re-probe reproduces the live rows
    assert (run / "probes.jsonl").read_text() == before
    # a second run into the same directory is refused, and nothing is lost
    assert main(["train", "--out", str(run)] + TINY) == 2
    assert (run / "probes.jsonl").read_text() == before
    # an unknown probe name is refused before anything is recomputed or rewritten
    theory = (run / "theory.json").read_text()
    r = subprocess.run([sys.executable, "-m", "topicdyn", "probe", str(run), "--probes",
                        "blocks,nosuch"], capture_output=True, text=True)
    assert r.returncode == 2 and "nosuch" in r.stderr and "Traceback" not in r.stderr
    assert (run / "theory.json").read_text() == theory
    assert (run / "probes.jsonl").read_text() == before
    # a checkpoint whose files are damaged: one line, exit 2 (plot and probe)
    import shutil
    ck = sorted((run / "checkpoints").iterdir())[-1]
    for f in [x for x in ck.rglob("*") if x.is_file()]:
        f.write_bytes(b"garbage")
    for cmd in ("plot", "probe"):
        r = subprocess.run([sys.executable, "-m", "topicdyn", cmd, str(run)],
                           capture_output=True, text=True)
        lines = [x for x in r.stderr.splitlines() if x.strip()]
        assert r.returncode == 2 and "Traceback" not in r.stderr, (cmd, r.stderr[-2000:])
        assert len(lines) == 1 and "checkpoint" in lines[0], (cmd, lines)
    assert (run / "probes.jsonl").read_text() == before
    shutil.rmtree(ck)


@pytest.mark.parametrize("args,field", [
    (["train", "data.T=0"], "data.T"),
    (["train", "mask.p_mask=1.5"], "mask.p_mask"),
    (["train", "model.name=foo"], "model.name"),
    (["train", "optim.name=rmsprop"], "optim.name"),
    (["train", "--preset", "V", "model.d_model=50"], "model.d_model"),
    (["train", "nosuch.field=1"], "nosuch.field"),
    (["info", "/nonexistent/run"], "run_dir"),
    (["probe", "/nonexistent/run"], "run_dir"),
])
def test_bad_input_exits_2_with_one_line(args, field):
    r = subprocess.run([sys.executable, "-m", "topicdyn"] + args, capture_output=True, text=True)
    assert r.returncode == 2
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and field in lines[0] and "Traceback" not in r.stderr
