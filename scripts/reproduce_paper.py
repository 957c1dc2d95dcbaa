#!/usr/bin/env python
"""Reproduce the claims of Li, Li & Risteski (ICML 2023) and write results/REPORT.md.

    python scripts/reproduce_paper.py            # full: 10 experiments x 5 seeds (< 30 min, 2 CPUs)
    python scripts/reproduce_paper.py --quick    # a few minutes: fewer steps and seeds
    python scripts/reproduce_paper.py --reuse-only   # re-render results/ from finished runs

Run from the project root (or pass --root). Finished runs whose config matches are reused
(--fresh retrains). The logic lives in topicdyn/reproduce/ (also `python -m topicdyn.reproduce`).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a checkout

from topicdyn.process import configure_host_devices  # noqa: E402

configure_host_devices()  # before jax is imported: a second core samples ahead
from topicdyn.reproduce.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
