"""The embedding-space experiment (EMBEDDING_SPACE.md §4) as one command:
`python scripts/embedding_space.py` trains the grid of scripts/sweeps/embedding_space.json
(a resumable sweep under runs/sweeps/embedding_space) and writes results/EMBEDDING_SPACE.md
with its figures; `--reuse-only` re-renders them from the finished runs."""
import sys

from topicdyn.process import configure_host_devices  # noqa: E402

configure_host_devices()  # before jax is imported: a second core samples ahead
from topicdyn.singh.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
