"""Figures and report.md from a tiny run made here: every plot type renders from files alone."""
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from topicdyn.cli import main
from topicdyn.jsonl import read_jsonl
from topicdyn.plots.common import load_checkpoints

TINY = ["data.T=3", "data.v=4", "data.N_min=10", "data.N_max=20", "data.batch_size=8",
        "train.steps=30", "train.log_every=10", "train.ckpt_log_points=3",
        "train.ckpt_linear_from=10", "train.ckpt_every=10", "train.chunk=8", "train.n_seeds=2"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 2-seed regime-F run through the real CLI: with probes on, train ends with figures and
    report.md (the default main job)."""
    d = tmp_path_factory.mktemp("plots") / "run"
    assert main(["train", "--preset", "F", "--out", str(d), "--no-progress"] + TINY) == 0
    return d


def _steps(run):
    return [r["step"] for r in read_jsonl(run / "checkpoints.jsonl")]


def test_train_ends_with_every_figure_and_the_report(run):
    figs = run / "figures"
    for f in ("matrices.png", "attention_maps.png", "blocks.png", "attention.png", "loss.png",
              "two_stage.png", "value_map.gif", "score_map.gif"):
        assert (figs / f).stat().st_size > 1000, f
    for f in ("value_map.gif", "score_map.gif"):  # one frame per checkpoint
        with Image.open(figs / f) as im:
            assert im.n_frames == len(_steps(run)) == 6
    text = (run / "report.md").read_text()
    assert "| claim | paper's statement | predicted (MC s.e.) |" in text
    assert "figures/loss.png" in text and "## Theory" in text


def test_plot_and_report_commands_regenerate(run, capsys):
    for f in (run / "figures").iterdir():
        f.unlink()
    (run / "report.md").unlink()
    assert main(["plot", str(run)]) == 0
    assert len(list((run / "figures").iterdir())) == 8
    assert main(["report", str(run)]) == 0
    assert "wrote" in capsys.readouterr().out
    text = (run / "report.md").read_text()
    last = json.loads((run / "verdicts.jsonl").read_text().splitlines()[-1])
    for c in last["claims"]:  # every claim of the last checkpoint is a table row
        assert f"| {c['claim']} |" in text
    assert "± " in text  # 2 seeds: mean ± sd


def test_two_stage_takes_several_runs(run, tmp_path):
    from topicdyn.plots import plot_two_stage

    out = plot_two_stage([run, run], tmp_path / "two.png", labels=["a", "b"])
    with Image.open(out) as im:
        assert im.size[0] > im.size[1]  # two panels side by side


def test_plot_matrices_match_the_block_probe(run):
    """The plots' numpy composites give the same block gaps as the `blocks` probe."""
    from topicdyn.config import load_config
    from topicdyn.data import word_topic
    from topicdyn.plots import vocab_matrices
    from topicdyn.plots.common import seed_params
    from topicdyn.probes.stats import block_stats

    cfg = load_config(run)
    step = _steps(run)[-1]
    (_, params), = load_checkpoints(run, [step])
    row = [r for r in read_jsonl(run / "probes.jsonl") if r["step"] == step][0]
    for seed in range(2):
        mats = vocab_matrices(seed_params(params, seed), cfg)
        for name in ("gram", "value", "score"):
            gap = float(block_stats(mats[name], word_topic(cfg.data))["gap"])
            np.testing.assert_allclose(gap, row[f"blocks/{name}_gap"][seed], rtol=1e-3,
                                       atol=1e-5)


@pytest.mark.parametrize("cmd", ["plot", "report"])
def test_bad_run_dir_exits_2_with_one_line(cmd, tmp_path):
    r = subprocess.run([sys.executable, "-m", "topicdyn", cmd, str(tmp_path / "nope")],
                       capture_output=True, text=True)
    assert r.returncode == 2
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "run_dir" in lines[0] and "Traceback" not in r.stderr
