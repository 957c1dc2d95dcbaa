"""Bayes-optimal next-token predictor for LDA documents (the causal objective's loss floor).

Under mask.objective=causal, position i shows the clean token i and predicts token i + 1 from
the prefix (positions <= i). Given the prefix, the next word is drawn from the same document
mixture, so the posterior predictive has the same form as the masked-token one with a clean
observation model (q = 1, r = 0) and the prefix's content-word multiset as the context:

    P(w_{i+1} = w | w_1..w_i) = sum_t E[theta_t | w_1..w_i] beta_{t, w}.

The posterior mean of theta is topicdyn.theory.posterior.topic_posterior (closed form for
disjoint topics under a Dirichlet prior, exact enumeration or DP otherwise). Only content words
are ever targets, so the predictor ignores the length model (the END token is never predicted).
"""
from __future__ import annotations

import numpy as np

from topicdyn.config import Config
from topicdyn.theory.common import describe
from topicdyn.theory.posterior import topic_posterior


def prefix_counts(cfg: Config, inputs: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(B, L, V) counts of content words at positions <= i (PAD and specials not counted)."""
    V = cfg.data.V
    B, L = inputs.shape
    onehot = np.zeros((B, L, V + 1))
    tok = np.where((inputs < V) & valid, inputs, V)
    onehot[np.arange(B)[:, None], np.arange(L)[None, :], tok] = 1.0
    return np.cumsum(onehot[..., :V], axis=1)


def next_token_predictive(cfg: Config, batch, *, n_theta: int = 4096, seed: int = 0):
    """BayesPredictive (topicdyn.theory.bayes) of the next word at every position of a causal
    batch: row (b, i) is P(token i+1 | tokens <= i); (B, L, n_vocab) log-probs, -inf on ids a
    target can never be (specials)."""
    from topicdyn.theory.bayes import BayesPredictive  # late: bayes dispatches to this module

    d = cfg.data
    V, nv = d.V, d.n_vocab
    inputs, valid = np.asarray(batch.inputs), np.asarray(batch.key_mask)
    B, L = inputs.shape
    counts = prefix_counts(cfg, inputs, valid).reshape(B * L, V)
    post = topic_posterior(cfg, counts, 1.0, 0.0, n_theta=n_theta, seed=seed)
    g = post.word.reshape(B, L, V)
    logp = np.full((B, L, nv), -np.inf)
    with np.errstate(divide="ignore"):
        logp[..., :V] = np.log(g / g.sum(-1, keepdims=True))
    se = None
    if post.word_se is not None:
        se = np.zeros((B, L, nv))
        with np.errstate(divide="ignore", invalid="ignore"):
            se[..., :V] = np.where(g > 0, post.word_se.reshape(B, L, V) / g, 0.0)
    notes = {"conditioning": "the clean prefix (content words at positions <= i) for token i+1",
             "observation_model": "clean tokens (q = 1, r = 0): the causal objective corrupts "
                                  "nothing",
             "masking": "none: the next-token objective on clean documents; loss where the next "
                        "token is a content word",
             "key_set": "prefix: each query sees positions <= its own",
             "rows": "every position: the next-token predictive from its prefix",
             "impossible_ids": "special ids get log-prob -inf (a target is always a content word)"}
    return BayesPredictive(logp, se, describe(cfg, post.method, **notes))
