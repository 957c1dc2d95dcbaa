"""The decisive experiment of EMBEDDING_SPACE.md §4 (claims S1-S6 of Singh 2023): the grid
(scripts/sweeps/embedding_space.json), its report (results/EMBEDDING_SPACE.md) and figures.
Entry point: `python scripts/embedding_space.py` (topicdyn.singh.cli)."""
