"""The embedding-space experiment's entry point (scripts/embedding_space.py -> topicdyn.singh.cli)
on a tiny grid: it trains the points, judges S1-S6 and writes the report and figures."""
from __future__ import annotations

import json

from topicdyn.singh.cli import main

TINY = ["data.T=3", "data.v=4", "data.N_min=10", "data.N_max=10", "data.batch_size=8",
        "model.d_model=15", "train.steps=20", "train.log_every=10", "train.ckpt_steps=[0,10,20]",
        "train.chunk=10", "train.n_eval=16", "train.n_pop_eval=40",
        "train.probes=blocks,attention,loss,dynamics,red,copy,coh,sample,near,walk,concept,pmi"]


def _spec(path, out, grid):
    path.write_text(json.dumps({"name": path.stem, "preset": "F", "base": TINY, "grid": grid,
                                "seeds": 2, "out": str(out)}))
    return path


def test_embedding_space_script_end_to_end(tmp_path):
    models = {"model.name,model.n_heads": [["embedding_only", 1], ["attention", 1]]}
    main_spec = _spec(tmp_path / "grid.json", tmp_path / "sweep", models)
    pmi_spec = _spec(tmp_path / "zipf.json", tmp_path / "sweep_overlap",
                     {"data.topic_words": ["overlap"], "data.overlap": [1], "model.name": ["attention"]})
    out = tmp_path / "results"
    assert main(["--spec", str(main_spec), "--pmi-spec", str(pmi_spec),
                 "--out-dir", str(out)]) == 0
    text = (out / "EMBEDDING_SPACE.md").read_text()
    for claim in ("S1 redundant attention", "S2 no in-context learning", "S5 encoding walk",
                  "S6 concept directions", "one-layer form"):
        assert claim in text
    # every figure the report links exists
    for line in text.splitlines():
        if line.startswith("!["):
            assert (out / line.split("(", 1)[1].rstrip(")")).exists(), line
    assert (out / "figures/embedding_space/pca/pca_training.gif").exists()
    # one layer without residual/LayerNorm: S5 cannot fail there, so it is never "holds"
    rows = [json.loads(x) for x in (tmp_path / "sweep/points").glob("*/verdicts.jsonl")
            .__next__().read_text().splitlines()]
    s5 = [c for c in rows[-1]["claims"] if c["claim"] == "S5 encoding walk"]
    assert s5 and s5[0]["verdict"] == "not decidable here"
    # re-rendering from the finished runs trains nothing and gives the same tables
    assert main(["--spec", str(main_spec), "--pmi-spec", str(pmi_spec), "--out-dir", str(out),
                 "--reuse-only"]) == 0
    again = (out / "EMBEDDING_SPACE.md").read_text()
    assert again.split("## Convergence")[1] == text.split("## Convergence")[1]


def test_embedding_space_script_bad_spec_is_one_line(tmp_path, capsys):
    assert main(["--spec", str(tmp_path / "missing.json")]) == 2
    assert capsys.readouterr().out.count("\n") == 1
