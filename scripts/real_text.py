"""The real-text experiment as one command: `python scripts/real_text.py` trains E, A, F and
the authors' BERT-style variant on the Wikipedia sample gensim ships and E, A, F on its
LDA-fitted twin (runs under runs/real_text, reused or resumed), then writes
results/REAL_TEXT.md with its figures; `--reuse-only` re-renders them. Needs the text extra:
pip install -e ".[text]"."""
import sys

from topicdyn.realtext.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
