"""The real-text experiment behind `python scripts/real_text.py` (results/REAL_TEXT.md): the
paper's Wikipedia statistics on models trained on the Wikipedia sample gensim ships, against
shuffled topic labels, and the same models on the corpus's LDA-fitted twin (runs.py: the runs;
figures.py, report.py: the report; cli.py: the command)."""
