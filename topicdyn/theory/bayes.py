"""Bayes-optimal masked-token predictor and the loss floor it implies.

What the predictor conditions on is exactly what a one-layer model without positional encoding
can see at a selected position i: its own shown token s_i and the multiset of key tokens.
- key_set="unselected": keys are the unselected positions (plus START/END), which show their true
  words; the other selected positions are invisible. Context = clean Dirichlet-multinomial counts.
- key_set="all": keys are all non-PAD positions; another key showing a content word may be a
  random replacement, so its likelihood is q [s == w] + r (topicdyn.theory.posterior). The
  query's own observation is taken out of the key multiset and used through its own likelihood.

Predictive (selected position i, shown token s_i, context C = keys other than i):

    P(w_i = w | s_i, C)  propto  l(s_i | w) * E[phi_theta(w) | C],
    l(s | w) = p_keep [s == w] + p_random / |R|   (s a content word)
             = constant                             (s = [MASK] or a special id: uninformative)

For disjoint topics with a Dirichlet prior and clean keys, E[phi_theta(w) | C] =
beta_t(w) (alpha + n_t) / (T alpha + n) with t the topic of w (Dirichlet-multinomial).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from topicdyn.config import Config
from topicdyn.masking import QUERY_KINDS
from topicdyn.theory.cache import memoized
from topicdyn.theory.common import beta_matrix, describe, n_random_ids, ratio_se
from topicdyn.theory.population import mc_batches
from topicdyn.theory.posterior import observation_noise, topic_posterior


@dataclass(frozen=True)
class BayesPredictive:
    """Bayes predictive for every position of a batch. B = batch, L = length."""

    log_prob: np.ndarray  # (B, L, n_vocab) float64; -inf on ids a target can never be
    stderr: np.ndarray | None  # (B, L, n_vocab) Monte Carlo s.e. of log_prob (delta method)
    assumptions: dict


def _visible_counts(cfg: Config, inputs: np.ndarray, key_mask: np.ndarray) -> np.ndarray:
    """(B, V) counts of content words shown at key positions."""
    V = cfg.data.V
    B, L = inputs.shape
    c = np.zeros((B, V + 1))
    tok = np.where(inputs < V, inputs, V)  # every non-content id into one dropped bin
    np.add.at(c, (np.repeat(np.arange(B), L), tok.reshape(-1)), key_mask.reshape(-1))
    return c[:, :V]


def bayes_predictive(cfg: Config, batch, *, use_query_token: bool = True, n_theta: int = 4096,
                     seed: int = 0) -> BayesPredictive:
    """Bayes posterior predictive of the true word at every position of an MLMBatch.

    Rows at selected positions are the predictive of the loss. Rows at other positions hold the
    context predictive E[phi_theta(w) | keys] (no own-token term, own key not removed): useful
    for probes, not a prediction of anything the loss sees. use_query_token=False drops the
    query's own shown token (the information limit of models whose output ignores the query
    token, e.g. uniform attention, when key_set="unselected").

    Under mask.objective=causal this is the next-token predictive from each position's prefix
    (topicdyn.theory.next_token; use_query_token does not apply: the query token is in its
    prefix).
    """
    if cfg.mask.objective == "causal":
        from topicdyn.theory.next_token import next_token_predictive

        return next_token_predictive(cfg, batch, n_theta=n_theta, seed=seed)
    d, m = cfg.data, cfg.mask
    V, nv = d.V, d.n_vocab
    inputs = np.asarray(batch.inputs)
    sel, key_mask = np.asarray(batch.selected), np.asarray(batch.key_mask)
    B, L = inputs.shape
    counts = _visible_counts(cfg, inputs, key_mask)
    q, r = observation_noise(cfg)
    # one context per document, plus (key_set=all) one per selected position showing a content
    # word: that position's own observation is not part of its context
    ctx_doc = np.arange(B)
    rows = [counts]
    own_out = sel & (inputs < V) & key_mask
    bi, li = np.nonzero(own_out)
    if len(bi):
        extra = counts[bi].copy()
        extra[np.arange(len(bi)), inputs[bi, li]] -= 1
        rows.append(extra)
    post = topic_posterior(cfg, np.concatenate(rows), q, r, n_theta=n_theta, seed=seed)
    ctx_index = np.broadcast_to(ctx_doc[:, None], (B, L)).copy()
    ctx_index[bi, li] = B + np.arange(len(bi))
    g = post.word[ctx_index]  # (B, L, V)

    lik = np.ones((B, L, V))
    if use_query_token:
        content_q = sel & (inputs < V)
        base = m.p_replace_random / n_random_ids(cfg)
        b2, l2 = np.nonzero(content_q)
        lik[b2, l2] = base
        lik[b2, l2, inputs[b2, l2]] += m.p_keep
    gl = g * lik
    norm = gl.sum(-1, keepdims=True)
    p = gl / norm
    logp = np.full((B, L, nv), -np.inf)
    with np.errstate(divide="ignore"):
        logp[..., :V] = np.log(p)
    se = None
    if post.mean_cov is not None:
        se = np.zeros((B, L, nv))
        with np.errstate(divide="ignore", invalid="ignore"):
            se[..., :V] = np.where(g > 0, post.word_se[ctx_index] / g, 0.0)
            # selected rows: delta method through the normaliser of p = g*l / (g.l):
            # var p_w = (l_w^2 C_ww - 2 l_w p_w (C l)_w + p_w^2 l.C.l) / (g.l)^2 with
            # C = beta^T K beta (K: the (T, T) covariance of the topic mean)
            bs, ls = np.nonzero(sel)
            bt = post.beta
            for i in range(0, len(bs), 256):
                b_, l_ = bs[i:i + 256], ls[i:i + 256]
                K = post.mean_cov[ctx_index[b_, l_]]
                lk, pp, nn = lik[b_, l_], p[b_, l_], norm[b_, l_]
                Kb = np.einsum("nts,sv->ntv", K, bt)  # K beta
                Cl = np.einsum("tv,nts,ns->nv", bt, K, lk @ bt.T)
                lCl = np.einsum("nv,nv->n", Cl, lk)[:, None]
                diag = np.einsum("tv,ntv->nv", bt, Kb)
                var = (lk ** 2 * diag - 2 * lk * pp * Cl + pp ** 2 * lCl) / nn ** 2
                se[b_, l_, :V] = np.where(pp > 0, np.sqrt(np.clip(var, 0, None)) / pp, 0.0)
    notes = {"conditioning": ("own shown token + key multiset" if use_query_token
                              else "key multiset only (own shown token ignored)"),
             "observation_model": f"visible content key: q [s==w] + r with q={q:.6g}, r={r:.6g}",
             "rows": "selected positions: Bayes predictive; other rows: context predictive",
             "impossible_ids": "special ids get log-prob -inf (a target is always a content word)"}
    return BayesPredictive(logp, se, describe(cfg, post.method, **notes))


@memoized(("data", "mask"))
def bayes_log_prob(cfg: Config, batch, **kw) -> np.ndarray:
    """(B, L, n_vocab) Bayes log-probabilities for an MLMBatch (see bayes_predictive)."""
    return bayes_predictive(cfg, batch, **kw).log_prob


def unigram(cfg: Config) -> np.ndarray:
    """(V,) marginal word distribution E[phi_theta] (both priors have E[theta_t] = 1/T)."""
    return beta_matrix(cfg).mean(0)


def batch_ce(log_prob: np.ndarray, batch) -> float:
    """Mean cross-entropy over selected positions of one batch (as training.masked_loss)."""
    sel = np.asarray(batch.selected)
    tgt = np.asarray(batch.targets)
    b, l = np.nonzero(sel)
    return float(-log_prob[b, l, tgt[b, l]].mean())


@dataclass(frozen=True)
class LossEstimate:
    """Expected per-batch loss with its Monte Carlo standard error; unpacks as (mean, stderr)."""

    mean: float
    stderr: float
    n_batches: int
    baselines: dict = field(default_factory=dict)  # name -> (mean, stderr) on the same batches
    assumptions: dict = field(default_factory=dict)
    by_kind: dict = field(default_factory=dict)  # predictor -> {mask|keep|random: (mean, se)}

    def __iter__(self):
        yield self.mean
        yield self.stderr


@memoized(("data", "mask"))
def bayes_loss(cfg: Config, n_batches: int = 200, seed: int = 12345, *,
               batch_size: int | None = None, use_query_token: bool = True,
               n_theta: int = 2048) -> LossEstimate:
    """Expected cross-entropy per selected position of the Bayes predictor under the run's
    masking: the loss floor.

    Monte Carlo over n_batches fresh batches of topicdyn.masking.sample_batch (keys
    fold_in(PRNGKey(seed), i), batch_size default data.batch_size): the ratio of the summed
    loss to the number of selected positions, with batches as iid clusters and the ratio's
    delta-method standard error (the same estimand as the models' population loss; a batch
    without selected positions adds nothing). Baselines on the same batches: uniform over the V
    content words, uniform over all ids, unigram, and (if use_query_token) the Bayes predictor
    that ignores the query's own token. `by_kind`: both Bayes predictors' losses split by what
    the query shows ([MASK] / its own word / a random word). Under mask.objective=causal: the
    next-token floor (the prefix is the whole conditioning; no query-token baseline).
    """
    use_query_token = use_query_token and cfg.mask.objective != "causal"
    V = cfg.data.V
    uni = np.log(unigram(cfg))
    names = ["bayes", "uniform_content", "uniform_all_ids", "unigram"]
    if use_query_token:
        names.append("bayes_without_query_token")
    sums = {k: [] for k in names}  # per batch: summed loss over the selected positions
    split_of = [k for k in ("bayes", "bayes_without_query_token") if k in names]
    kinds = {k: {n: ([], []) for n in QUERY_KINDS} for k in split_of}
    counts: list[float] = []
    method = None
    for i, batch in enumerate(mc_batches(cfg, n_batches, seed, batch_size)):
        pred = bayes_predictive(cfg, batch, use_query_token=use_query_token, n_theta=n_theta,
                                seed=seed + i)
        method = pred.assumptions["estimator"]
        b, l = np.nonzero(np.asarray(batch.selected))
        tgt = np.asarray(batch.targets)[b, l]
        kind = np.asarray(batch.kind)[b, l]
        per = {"bayes": -pred.log_prob[b, l, tgt],
               "uniform_content": np.full(len(tgt), np.log(V)),
               "uniform_all_ids": np.full(len(tgt), np.log(cfg.data.n_vocab)),
               "unigram": -uni[tgt]}
        if use_query_token:
            lp = bayes_predictive(cfg, batch, use_query_token=False, n_theta=n_theta,
                                  seed=seed + i).log_prob
            per["bayes_without_query_token"] = -lp[b, l, tgt]
        counts.append(float(len(tgt)))
        for k, v in per.items():
            sums[k].append(float(v.sum()))
        for k in split_of:
            for n, code in QUERY_KINDS.items():
                kinds[k][n][0].append(float(per[k][kind == code].sum()))
                kinds[k][n][1].append(float(np.sum(kind == code)))
    mean, se = ratio_se(sums["bayes"], counts)
    base = {k: ratio_se(v, counts) for k, v in sums.items() if k != "bayes"}
    B = batch_size or cfg.data.batch_size
    est = (f"Monte Carlo over {n_batches} batches of {B} documents (seed {seed}); loss per "
           f"selected position (ratio over batches); predictive by {method}")
    notes = {"conditioning": "own shown token + key multiset" if use_query_token
             else "key multiset only"}
    if cfg.mask.objective == "causal":  # the predictor's own record (prefix, clean tokens)
        notes = {k: v for k, v in pred.assumptions.items() if k != "estimator"}
    split = {k: {n: ratio_se(num, den) for n, (num, den) in kinds[k].items() if sum(den) > 0}
             for k in split_of}
    return LossEstimate(mean, se, n_batches, base, describe(cfg, est, **notes), split)


def named_floors(cfg: Config, est: LossEstimate) -> dict:
    """The floors of one bayes_loss estimate by name, JSON-able: {"bayes/query": {loss, stderr,
    by_kind: {mask|keep|random: {loss, stderr}}}, "bayes/visible": ...}; causal: bayes/prefix."""
    def one(mean_se, kinds):
        return {"loss": float(mean_se[0]), "stderr": float(mean_se[1]),
                "by_kind": {k: {"loss": float(m), "stderr": float(e)}
                            for k, (m, e) in (kinds or {}).items()}}
    if cfg.mask.objective == "causal":
        return {"bayes/prefix": one((est.mean, est.stderr), None)}
    out = {"bayes/query": one((est.mean, est.stderr), est.by_kind.get("bayes"))}
    if "bayes_without_query_token" in est.baselines:
        out["bayes/visible"] = one(est.baselines["bayes_without_query_token"],
                                   est.by_kind.get("bayes_without_query_token"))
    return out

