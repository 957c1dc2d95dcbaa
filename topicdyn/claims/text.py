"""The paper's Wikipedia claims, judged against shuffled topic labels (opt-in: they need the
`permuted` probe, topicdyn.probes.permuted).

Li, Li & Risteski check on Wikipedia, with the topics of a fitted LDA, that same-topic words have
larger embedding inner products and get more attention than words of different topics. With
fitted labels "same-topic > cross-topic" is not evidence by itself: frequent words, identical
words and the fit's own errors can make any labelling show a gap. The null here is the same
statistic under N_PERM random permutations of the labels among the labelled words (topic sizes
kept): a claim passes for a seed when its statistic exceeds the permuted mean by more than
NULL_SDS standard deviations of the permuted values, and the row passes when every seed does
(a normal-theory threshold on N_PERM = 8 permutations: a screen, not an exact p-value).
"""
from __future__ import annotations

import numpy as np

from topicdyn.claims.core import Claim, Judging, register, verdict
from topicdyn.models.variant import TRAINED_ATTENTION, TRAINED_EMBEDDING

NULL_SDS = 3.0


def _beyond_null(j: Judging, name: str, paper: str, key: str, mean_key: str, sd_key: str,
                 what: str) -> dict:
    v = np.asarray(j.get(key), float)
    mu, sd = np.asarray(j.get(mean_key), float), np.asarray(j.get(sd_key), float)
    excess = (v - mu) / np.maximum(sd, 1e-12)  # per seed, in permuted sds
    row = verdict(name, paper, f"> shuffled + {NULL_SDS:g} sd", list(v), 0.0,
                  lambda _: bool((excess > NULL_SDS).all()), None,
                  f"{what}; shuffled labels ({mean_key.split('/')[0]} probe): mean "
                  f"{float(mu.mean()):.4g}, sd {float(sd.mean()):.3g}; excess per seed "
                  f"{', '.join(f'{x:.1f}' for x in excess)} sd; every seed must exceed "
                  f"{NULL_SDS:g} sd", basis="parameters" if "gram" in key else
                  f"eval set ({j.cfg.train.n_eval} documents)")
    row["null_mean"], row["null_sd"] = float(mu.mean()), float(sd.mean())
    row["excess_sd"] = [float(x) for x in excess]
    return row


def _gram(j: Judging) -> dict:
    return _beyond_null(j, "embedding Gram beyond shuffled labels", "same-topic words have "
                        "larger embedding inner products (their Wikipedia check)",
                        "blocks/gram_gap", "permuted/gram_gap_perm_mean",
                        "permuted/gram_gap_perm_sd",
                        "same - cross mean entry of the row-centred E E^T")


def _attention(j: Judging) -> dict:
    return _beyond_null(j, "attention beyond shuffled labels", "same-topic pairs get more "
                        "attention (their Wikipedia check)", "attention/ratio",
                        "permuted/attn_ratio_perm_mean", "permuted/attn_ratio_perm_sd",
                        "normalised attention to same-topic other words / cross-topic")


register(Claim("embedding Gram beyond shuffled labels", "same-topic words have larger embedding "
               "inner products", frozenset({TRAINED_EMBEDDING}), (),
               ("blocks/gram_gap", "permuted/gram_gap_perm_mean", "permuted/gram_gap_perm_sd"),
               _gram, opt_in=True, triggers=("permuted/gram_gap_perm_mean",)))
register(Claim("attention beyond shuffled labels", "same-topic pairs get more attention",
               frozenset({TRAINED_ATTENTION}), (),
               ("attention/ratio", "permuted/attn_ratio_perm_mean", "permuted/attn_ratio_perm_sd"),
               _attention, opt_in=True, triggers=("permuted/attn_ratio_perm_mean",)))
