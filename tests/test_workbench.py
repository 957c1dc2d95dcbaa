"""The researcher's workbench through its entry points, on one tiny probed run and one tiny
sweep: runs as DataFrames (checked value by value against the JSONL files parsed here), export,
compare, config discovery, the TensorBoard tracker, the progress display, GIFs, report.html
and the sweep heatmap's colour scale."""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import re
import shutil
import struct
import subprocess
from contextlib import redirect_stderr, redirect_stdout
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

import topicdyn
from topicdyn.cli import main

TINY = ["data.T=3", "data.v=4", "data.N_min=10", "data.N_max=20", "data.batch_size=8",
        "train.steps=30", "train.log_every=10", "train.ckpt_log_points=3",
        "train.ckpt_linear_from=10", "train.ckpt_every=10", "train.chunk=8",
        "train.n_seeds=2", "train.n_pop_eval=200"]


def _cli(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            rc = main(args)
        except SystemExit as e:  # argparse's own errors
            rc = e.code
    return rc, out.getvalue(), err.getvalue()


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A probed run of regime F, 2 seeds, with the progress display and TensorBoard on."""
    d = tmp_path_factory.mktemp("workbench") / "run"
    rc, out, err = _cli(["train", "--preset", "F", "--out", str(d), "--log-to", "tensorboard",
                         *TINY])
    assert rc == 0, err[-3000:]
    return d, out, err


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Two points that differ in the learning rate (one compiled program), probed."""
    root = tmp_path_factory.mktemp("sweep")
    spec = root / "s.json"
    spec.write_text(json.dumps({
        "name": "s", "preset": "F", "base": TINY[:-2] + ["train.n_pop_eval=200"], "seeds": 1,
        "out": str(root / "out"), "theory": False,
        "grid": {"optim.lr": [0.01, 0.02], "model.init_scale": [0.02]},
        "plots": [{"metric": "t50/lag", "x": "optim.lr", "y": "model.init_scale"}]}))
    rc, _, err = _cli(["sweep", str(spec), "--no-progress"])
    assert rc == 0, err[-3000:]
    return root / "out"


def _same(a, b) -> bool:
    """Equal, both missing (None / NaN), or equal numbers."""
    missing = lambda v: v is None or (isinstance(v, float) and math.isnan(v))  # noqa: E731
    if missing(a) or missing(b):
        return missing(a) and missing(b)
    return a == b


# ---- runs as data ---------------------------------------------------------------------------
def test_load_run_matches_the_files_value_by_value(run):
    d, _, _ = run
    r = topicdyn.load_run(d)
    metrics = _jsonl(d / "metrics.jsonl")
    assert len(r.metrics) == 2 * len(metrics)
    m = r.metrics.set_index(["step", "seed"])
    for row in metrics:
        for j in range(2):
            got = m.loc[(row["step"], j)]
            assert got["loss"] == row["loss"][j] and got["loss_last"] == row["loss_last"][j]
            assert got["loss_window"] == row["loss_window"]
            for g, v in row["grad_norm"].items():
                assert got[f"grad_norm/{g}"] == v[j]
            for g, v in row["param_norm"].items():
                assert got[f"param_norm/{g}"] == v[j]
    probes = _jsonl(d / "probes.jsonl")
    p = r.probes.set_index(["step", "seed"])
    assert len(r.probes) == 2 * len(probes)
    for row in probes:
        for key, vals in row.items():
            if key != "step":
                assert [p.loc[(row["step"], j), key] for j in range(2)] == vals, key
    verdicts = _jsonl(d / "verdicts.jsonl")
    v = r.verdicts.set_index(["step", "claim"])
    assert len(r.verdicts) == sum(len(x["claims"]) for x in verdicts)
    for row in verdicts:
        for c in row["claims"]:
            got = v.loc[(row["step"], c["claim"])]
            for key, val in c.items():
                if isinstance(val, dict):
                    for k2, x in val.items():
                        assert _same(got[f"{key}/{k2}"], x), (key, k2)
                elif key != "claim":
                    assert _same(got[key], val), key
    theory = json.loads((d / "theory.json").read_text())
    t = r.theory.set_index("quantity")
    q = theory["floors"]["bayes/query"]
    assert t.loc["floors/bayes/query/loss", "value"] == q["loss"]
    assert t.loc["floors/bayes/query/loss", "se"] == q["stderr"]
    cc = theory["class_ceiling"]
    assert t.loc["class_ceiling/loss", "value"] == cc["loss"]
    assert t.loc["class_ceiling/loss", "se"] == cc["stderr"]
    assert [c["step"] for c in _jsonl(d / "checkpoints.jsonl")] == list(r.checkpoints["step"])


def test_export_csv_and_parquet(run, tmp_path):
    d, _, _ = run
    rc, out, err = _cli(["export", str(d), "--to", "csv", "--out", str(tmp_path / "csv")])
    assert rc == 0, err
    rows = list(csv.DictReader((tmp_path / "csv" / "metrics.csv").open()))
    metrics = _jsonl(d / "metrics.jsonl")
    want = [(r["step"], j, r["loss"][j]) for r in metrics for j in range(2)]
    assert [(int(x["step"]), int(x["seed"]), float(x["loss"])) for x in rows] == want
    assert {f.name for f in (tmp_path / "csv").iterdir()} == {
        f"{n}.csv" for n in ("metrics", "probes", "verdicts", "theory", "timing", "checkpoints")}
    import pyarrow.parquet as pq

    rc, _, err = _cli(["export", str(d), "--to", "parquet", "--out", str(tmp_path / "pq")])
    assert rc == 0, err
    probes = pq.read_table(tmp_path / "pq" / "probes.parquet").to_pylist()
    rows = _jsonl(d / "probes.jsonl")
    assert [x["blocks/value_gap"] for x in probes] == [v for r in rows
                                                      for v in r["blocks/value_gap"]]
    verdicts = pq.read_table(tmp_path / "pq" / "verdicts.parquet").to_pylist()
    assert [x["verdict"] for x in verdicts] == [c["verdict"] for r in _jsonl(d / "verdicts.jsonl")
                                                for c in r["claims"]]


def test_load_sweep_and_compare_across_points(run, sweep, tmp_path):
    s = topicdyn.load_sweep(sweep)
    assert sorted(s.metrics["point"].unique()) == sorted(s.runs)
    assert len(s.runs) == 2
    for name in s.runs:
        rows = _jsonl(sweep / "points" / name / "metrics.jsonl")
        sub = s.metrics[s.metrics["point"] == name]
        assert list(sub["loss"]) == [r["loss"][0] for r in rows]
        lr = json.loads((sweep / "points" / name / "config.json").read_text())["optim"]["lr"]
        assert set(sub["optim.lr"]) == {lr}
    assert len(s.summary) == 2
    assert (sweep / "figures" / "t50_lag__lr__init_scale.png").exists()
    # a run and a sweep (its two points) side by side
    d, _, _ = run
    out = tmp_path / "cmp"
    rc, text, err = _cli(["compare", str(d), str(sweep), "--out", str(out)])
    assert rc == 0, err
    for f in ("loss.png", "blocks.png", "attention.png", "t50.png", "comparison.md"):
        assert (out / f).stat().st_size > 0, f
        if f.endswith(".png"):
            assert (out / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = text.split("claims at each run's last checkpoint:\n")[1].split("\nwrote ")[0]
    lines = table.splitlines()
    assert len(lines[0].split(" | ")) == 4  # claim + three runs
    claims = [c["claim"] for c in _jsonl(d / "verdicts.jsonl")[-1]["claims"]]
    assert [ln.split(" | ")[0].strip() for ln in lines[1:]] == claims
    # one seed per point: a value alone, never "± 0"
    assert "lr=0.01" in lines[0] and "lr=0.02" in lines[0]


# ---- config discovery ------------------------------------------------------------------------
def test_config_lists_every_field_with_the_validation_texts():
    from topicdyn.config import Config

    rc, out, _ = _cli(["config", "--preset", "V", "data.T=5", "--json"])
    assert rc == 0
    rows = {r["field"]: r for r in json.loads(out)}
    sections = {f.name: type(getattr(Config(), f.name)) for f in dataclasses.fields(Config)
                if f.name != "preset"}
    want = {f"{s}.{g.name}" for s, cls in sections.items() for g in dataclasses.fields(cls)}
    want |= {"preset"}
    assert set(rows) == want
    assert all(r["allowed"] and r["help"] for r in rows.values())
    assert rows["data.T"]["value"] == 5 and rows["data.T"]["default"] == 10
    assert rows["model.embedding"]["value"] == "onehot"  # the preset's
    # the allowed values are the text a bad value's error gives
    for bad in ("data.T=0", "mask.key_set=nope", "optim.name=rmsprop", "train.chunk=0",
                "data.N_max=2"):
        rc, _, err = _cli(["train", "--preset", "V", "data.T=5", bad])
        assert rc == 2 and rows[bad.split("=")[0]]["allowed"] in err, (bad, err)
    rc, text, _ = _cli(["config"])
    assert all(f"{name} = " in text for name in want)


def test_unknown_fields_and_flags_get_a_hint():
    rc, _, err = _cli(["train", "train.step=5"])
    assert rc == 2 and "did you mean train.steps" in err and len(err.strip().splitlines()) == 1
    rc, _, err = _cli(["train", "dat.T=5"])
    assert rc == 2 and "did you mean data.T" in err
    rc, _, err = _cli(["train", "--steps", "100"])
    assert rc == 2 and "write train.steps=100" in err and len(err.strip().splitlines()) == 1
    rc, _, err = _cli(["config", "--lr=0.1"])
    assert rc == 2 and "write optim.lr=0.1" in err


# ---- trackers and the progress display --------------------------------------------------------
def _tb_scalars(logdir: Path) -> dict:
    """{(tag, step): value} from TensorBoard event files (TFRecord framing, Event protos)."""
    from tensorboardX.proto import event_pb2

    out = {}
    for f in sorted(logdir.glob("events.out.tfevents.*")):
        data, pos = f.read_bytes(), 0
        while pos < len(data):
            (n,) = struct.unpack("<Q", data[pos:pos + 8])
            ev = event_pb2.Event.FromString(data[pos + 12:pos + 12 + n])
            pos += 12 + n + 4
            for v in ev.summary.value:
                out[(v.tag, ev.step)] = v.simple_value
    return out


def test_tensorboard_gets_the_files_scalars(run):
    d, _, _ = run
    tb = _tb_scalars(d / "tensorboard")
    n = 0
    for row in _jsonl(d / "metrics.jsonl"):
        for j in range(2):
            assert tb[(f"loss/seed{j}", row["step"])] == np.float32(row["loss"][j])
            for g, v in row["grad_norm"].items():
                assert tb[(f"grad_norm/{g}/seed{j}", row["step"])] == np.float32(v[j])
            n += 1
    for row in _jsonl(d / "probes.jsonl"):
        for j in range(2):
            assert tb[(f"blocks/value_gap/seed{j}", row["step"])] == \
                np.float32(row["blocks/value_gap"][j])
    assert n > 0


def test_progress_shows_phases_and_no_compile_time_in_the_eta(run):
    _, out, err = run
    screen = err.replace("\r", "\n")
    assert "theory: computing" in out and "compile" in screen and "train:" in screen
    assert "steps_s" not in screen  # tqdm's own rate is the only rate
    # an ETA of an hour or more (the compile time at step 1 taken as the rate) never shows
    assert not re.search(r"<\d+:\d\d:\d\d", screen), screen[-2000:]
    assert re.search(r"probed=\d+/\d+", screen)


def test_end_of_run_table_has_no_spread_with_one_seed(sweep):
    from topicdyn.verdicts import format_table

    claims = _jsonl(next((sweep / "points").iterdir()) / "verdicts.jsonl")[-1]["claims"]
    measured = lambda table: [ln.split(" | ")[2] for ln in table.splitlines()]  # noqa: E731
    one, two = measured(format_table(claims, 1)), measured(format_table(claims, 2))
    assert one[0].strip() == "measured (se)" and two[0].strip() == "measured ± sd (se)"
    assert not any("±" in m for m in one)  # one seed: the value alone
    assert any("±" in m for m in two)


# ---- figures ----------------------------------------------------------------------------------
def _gif_tables(data: bytes) -> tuple[bool, list[bool]]:
    """(has a global colour table, [has a local colour table] per image) of a GIF file."""
    assert data[:6] in (b"GIF87a", b"GIF89a")
    packed, pos, local = data[10], 13, []
    if packed & 0x80:
        pos += 3 * 2 ** ((packed & 7) + 1)
    while data[pos] != 0x3B:
        if data[pos] == 0x21:  # extension: label, sub-blocks
            pos += 2
            while data[pos]:
                pos += data[pos] + 1
            pos += 1
        else:  # 0x2C: image descriptor, optional local table, LZW data sub-blocks
            flags = data[pos + 9]
            local.append(bool(flags & 0x80))
            pos += 10 + (3 * 2 ** ((flags & 7) + 1) if flags & 0x80 else 0) + 1
            while data[pos]:
                pos += data[pos] + 1
            pos += 1
    return bool(packed & 0x80), local


def test_gifs_share_one_palette_and_colour_scale(run):
    from PIL import Image

    d, _, _ = run
    n_ck = len(_jsonl(d / "checkpoints.jsonl"))
    for name in ("value_map.gif", "score_map.gif"):
        path = d / "figures" / name
        has_global, local = _gif_tables(path.read_bytes())
        assert has_global and len(local) == n_ck and not any(local), name
        im = Image.open(path)
        frames = []
        for i in range(im.n_frames):
            im.seek(i)
            frames.append(np.asarray(im.convert("RGB")))
        H, W, _ = frames[0].shape
        assert W >= 600 and H >= 600  # readable
        bar = [f[int(0.1 * H):int(0.65 * H), int(0.8 * W):] for f in frames]  # the colour bar
        assert len(np.unique(bar[0].reshape(-1, 3), axis=0)) > 20
        assert all(np.array_equal(b, bar[0]) for b in bar)  # one scale, same colours
        strip = [f[int(0.8 * H):] for f in frames]  # the loss strip: its marker moves
        assert not np.array_equal(strip[0], strip[-1])


def test_signed_heatmaps_are_centred_on_zero():
    from topicdyn.sweep.plots import color_scale

    norm, cmap = color_scale("t50/lag", -10.0, 30.0)
    assert cmap == "RdBu_r" and norm(0.0) == 0.5 and norm(-30.0) == 0.0 and norm(30.0) == 1.0
    norm, cmap = color_scale("attention/ratio", 1.0, 3.0)
    assert cmap == "viridis" and norm(1.0) == 0.0


def test_labelling_figure_redraws_from_the_summary(tmp_path):
    from topicdyn.reproduce.cli import main as reproduce

    exps = {n: {"last_probes": {"attention/ref_ratio": [0.7, 0.8], "attention/ref_ratio_fixed":
                                [0.6, 0.65], "attention/ratio": [0.55, 0.6]}}
            for n in ("F", "A")}
    exps["A"]["last_probes"] = {k: [21.0, 25.0] for k in exps["F"]["last_probes"]}
    (tmp_path / "summary.json").write_text(json.dumps(
        {"meta": {"steps": 100, "seeds": 2}, "experiments": exps}))
    assert reproduce(["--labelling-only", "--results", str(tmp_path)]) == 0
    png = tmp_path / "figures" / "attention_labelling.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*tmp*"))


# ---- report.html -------------------------------------------------------------------------------
class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs, self.rows, self.in_body, self.tables = [], 0, False, 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "src" in a or "href" in a:
            self.srcs.append(a.get("src") or a.get("href"))
        if tag == "table" and "sortable" in (a.get("class") or ""):
            self.tables += 1
        if tag == "tbody":
            self.in_body = True
        if tag == "tr" and self.in_body:
            self.rows += 1

    def handle_endtag(self, tag):
        if tag == "tbody":
            self.in_body = False


def test_report_html_is_self_contained(run):
    from topicdyn.report import FIGURES

    d, _, _ = run
    page = _Page()
    page.feed((d / "report.html").read_text())
    present = [f for f, _ in FIGURES if (d / "figures" / f).exists()]
    assert len(page.srcs) == len(present) and present
    assert all(s.startswith(("data:image/png;base64,", "data:image/gif;base64,"))
               for s in page.srcs)
    assert page.tables == 1 and page.rows == len(_jsonl(d / "verdicts.jsonl")[-1]["claims"])


def _chromium() -> str | None:
    return next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(b)), None)


@pytest.mark.skipif(_chromium() is None, reason="no Chromium on this machine (Debian: apt-get "
                    "install chromium); report.html's structure is checked above")
def test_report_html_renders_and_sorts_in_headless_chromium(run, tmp_path):
    d, _, _ = run
    probe = """<script>window.addEventListener("load", function () {
      var table = document.querySelector("table.sortable");
      table.tHead.rows[0].cells[6].click();
      var rows = Array.prototype.map.call(table.tBodies[0].rows, function (r) {
        return [r.cells[0].textContent, r.cells[6].textContent]; });
      var imgs = Array.prototype.filter.call(document.images, function (i) {
        return i.complete && i.naturalWidth > 0; }).length;
      var pre = document.createElement("pre"); pre.id = "probe";
      pre.textContent = JSON.stringify({rows: rows, images: imgs,
        ready: table.getAttribute("data-sortable")});
      document.body.appendChild(pre); });</script></body>"""
    page = tmp_path / "report.html"
    page.write_text((d / "report.html").read_text().replace("</body>", probe))
    r = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu",
                        "--virtual-time-budget=10000", "--dump-dom", page.as_uri()],
                       capture_output=True, text=True, timeout=120)
    m = re.search(r'<pre id="probe">(.*?)</pre>', r.stdout, re.S)
    assert m, r.stderr[-2000:]
    import html
    got = json.loads(html.unescape(m.group(1)))
    claims = _jsonl(d / "verdicts.jsonl")[-1]["claims"]
    from topicdyn.report import FIGURES
    present = [f for f, _ in FIGURES if (d / "figures" / f).exists()]
    assert got["ready"] == "ready" and got["images"] == len(present)  # every figure decoded
    verdicts = [v for _, v in got["rows"]]
    assert verdicts == sorted(c["verdict"] for c in claims)  # sorted by the clicked column
    assert sorted(c for c, _ in got["rows"]) == sorted(c["claim"] for c in claims)
