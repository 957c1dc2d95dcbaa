"""Real text: a corpus as a data source (data.source=corpus), its LDA topic labels and the
LDA-fitted synthetic twin. See text.py (tokens, vocabulary, split), windows.py (batches) and
lda.py (labels, twin; needs the text extra: pip install -e '.[text]')."""
from topicdyn.corpus.text import Corpus, load_corpus

__all__ = ["Corpus", "load_corpus"]
