"""The embedding-space experiment (EMBEDDING_SPACE.md §4) as one command:
`python scripts/embedding_space.py` trains the grid of scripts/sweeps/embedding_space.json
(a resumable sweep under runs/sweeps/embedding_space) and writes results/EMBEDDING_SPACE.md
with its figures; `--reuse-only` re-renders them from the finished runs."""
import sys

from topicdyn.singh.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
