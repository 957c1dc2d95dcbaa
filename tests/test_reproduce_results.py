"""The reproduction's report replaces only its own figures in results/figures/: the
embedding-space and real-text scripts keep theirs there too (a --fresh reproduction had deleted
them)."""
from __future__ import annotations

from topicdyn.reproduce.experiments import EXPERIMENTS
from topicdyn.reproduce.results import CROSS_FIGURES, clear_own_figures


def test_clear_own_figures_keeps_other_scripts_figures(tmp_path):
    fig = tmp_path / "figures"
    own = [fig / e.name / "loss.png" for e in EXPERIMENTS] + [fig / f for f in CROSS_FIGURES]
    others = [fig / "embedding_space" / "loss.png", fig / "embedding_space" / "pca" / "a.png",
              fig / "real_text" / "gram_gap.png", fig / "notes.txt"]
    for p in own + others:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    clear_own_figures(fig)
    assert [p for p in own if p.exists()] == []
    assert all(p.read_bytes() == b"x" for p in others)
    assert not any((fig / e.name).exists() for e in EXPERIMENTS)
