"""Reproduction of Li, Li & Risteski (ICML 2023): every paper experiment -> results/REPORT.md.

`experiments` defines the experiments and trains / reuses their runs, `results` renders
results/ (REPORT.md, summary.json, figures, a section of README.md) and `cli.main` is the entry
point of `python scripts/reproduce_paper.py` and `python -m topicdyn.reproduce`.
"""
