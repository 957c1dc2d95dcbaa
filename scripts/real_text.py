"""The real-text experiment as one command: `python scripts/real_text.py` trains E, A, F and
the authors' BERT-style variant on the Wikipedia sample gensim ships and E, A, F on its
LDA-fitted twin (runs under runs/real_text, reused or resumed), then writes
results/REAL_TEXT.md with its figures; `--reuse-only` re-renders them. Needs the text extra:
pip install -e ".[text]"."""
import sys

from topicdyn.process import configure_host_devices  # noqa: E402

configure_host_devices()  # before jax is imported: a second core samples ahead
from topicdyn.realtext.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
