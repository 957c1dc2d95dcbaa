"""Regime A: optimal attention scores with W^V frozen to the topic-block matrix.

With one-hot embeddings the score of a query showing token x on a key showing token y is
S[x, y] = (W^Q W^K^T)[x, y] / sqrt(d). With W^V = topic block (1 between content words of one
topic) and decoder = I, the logit of content word w is the attention mass A_t on keys of its
topic t (special logits are 0), so a query's loss depends on S only through its topic masses:

    CE:       log(v sum_t exp(A_t) + n_special_ids) - A_{t*}
    squared:  v sum_t A_t^2 - 2 A_{t*} + 1            (t* = topic of the target)

Symmetric family (disjoint uniform topics; the loss is invariant under topic and within-topic
word permutations). Content query x: S[x, x] = s_self, S[x, y] = s_same (y of x's topic),
S[x, y] = 0 (other topics: the per-query gauge, softmax ignores a constant per query),
S[x, special key] = s_special_content. Uninformative queries ([MASK], or a random special id):
S[., content] = 0 (by symmetry every content key gets one score; it is the gauge) and
S[., special key] = s_special_uninformative; one score is shared by all special key tokens.
Unlike regimes E/V the loss is not convex in S, so this is the best symmetric solution, not a
proven global optimum. Scores are bounded, s = bound * tanh(u / bound): a score reported at the
bound, whose loss is flat out to the bound (`limits`), means the optimum is a limit (that
attention weight -> 0 or -> 1). s_self differs from s_same (identical-token and same-topic keys
carry the same topic information, but identical-token keys also hint that the query token is a kept
one): the fit runs in the tied family s_self = s_same first, then jointly from that point and
from the best point of a coarse (s_self, s_same) grid, keeping the better; `self_tie_cost` says
what tying s_self to s_same costs. Optimiser:
damped Newton with a trust region (topicdyn.theory.common.newton_minimize).
"""
from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from topicdyn.config import Config
from topicdyn.theory.cache import memoized
from topicdyn.theory.common import (describe, newton_minimize, owner_topic, ratio_se,
                                    require_symmetric, sandwich_cov)
from topicdyn.theory.population import PopulationSample, describe_sample, population

NAMES = ("s_self", "s_same", "s_special_content", "s_special_uninformative")


def _query_data(sample: PopulationSample, cfg: Config) -> dict:
    """Per-query arrays: topic key counts (Q, T), own-token key count, special key count, query
    topic (-1: uninformative), target topic, weight, document."""
    d = cfg.data
    V, T = d.V, d.T
    own = owner_topic(cfg)
    kc = sample.key_counts
    n_topic = kc[:, :V] @ np.eye(T)[own]  # (D, T)
    tok, doc = sample.q_token, sample.q_doc
    content = tok < V
    return {
        "nt": n_topic[doc], "n_sp": kc[doc, V:].sum(1),
        "k_self": np.where(content, kc[doc, np.minimum(tok, V - 1)], 0.0),
        "tx": np.where(content, own[np.minimum(tok, V - 1)], -1),
        "tstar": own[sample.q_target], "w": sample.q_weight, "doc": doc,
    }


def _per_query(s, q, v: int, n_special_ids: int, loss: str):
    """Loss (Q,) of every query for scores s = (s_self, s_same, s_sc, s_su)."""
    e = jnp.exp(s)
    T = q["nt"].shape[1]
    content = q["tx"] >= 0
    onehot = jax.nn.one_hot(jnp.where(content, q["tx"], 0), T) * content[:, None]
    nt_x = jnp.sum(q["nt"] * onehot, 1)
    m_same = q["k_self"] * e[0] + (nt_x - q["k_self"]) * e[1]
    num = q["nt"] + onehot * (m_same - nt_x)[:, None]
    Z = jnp.sum(num, 1) + q["n_sp"] * jnp.where(content, e[2], e[3])
    A = num / jnp.where(Z > 0, Z, 1.0)[:, None]
    At = jnp.sum(A * jax.nn.one_hot(q["tstar"], T), 1)
    if loss == "ce":
        return jnp.log(v * jnp.sum(jnp.exp(A), 1) + n_special_ids) - At
    return v * jnp.sum(A * A, 1) - 2.0 * At + 1.0


@dataclass(frozen=True)
class AttentionOptimum:
    """Symmetric optimum of regime A (trained W^Q, W^K)."""

    loss: str
    params: dict  # s_self, s_same, s_special_content, s_special_uninformative (cross-topic = 0)
    param_se: dict  # Monte Carlo s.e. (0: enumeration; nan: a limit or invisible)
    limits: tuple  # scores whose optimum is +-inf: sending them to +-bound costs < LIMIT_TOL
    invisible: tuple  # scores the loss does not depend on (left at 0)
    score_gap: float  # s_same - s_cross (s_cross = 0): same-topic minus cross-topic score
    score_gap_se: float
    pair_ratio: float  # exp(score_gap): attention to one same-topic key / one cross-topic key
    attention_ratio: float  # pooled over content-token queries (see attention_ratio)
    attention_ratio_tied: float  # the same with s_self := s_same
    self_tie_cost: float  # loss(s_self := s_same) - plateau (>= 0): how much s_self matters
    plateau: float
    plateau_se: float
    uniform_loss: float  # loss with all scores 0 (uniform attention over the keys)
    score_matrix: np.ndarray  # (n_vocab, n_vocab) S at the optimum
    assumptions: dict
    uniform_loss_se: float = float("nan")  # its Monte Carlo s.e. (0: enumeration)


LIMIT_TOL = 1e-5  # nats; far below any Monte Carlo error quoted here


def score_matrix(cfg: Config, p: dict) -> np.ndarray:
    """(n_vocab, n_vocab) S of the symmetric family for scores p (names as NAMES)."""
    d = cfg.data
    V, nv = d.V, d.n_vocab
    own = owner_topic(cfg)
    S = np.zeros((nv, nv))
    S[:V, :V] = np.where(own[:, None] == own[None, :], p["s_same"], 0.0)
    S[np.arange(V), np.arange(V)] = p["s_self"]
    S[:V, V:] = p["s_special_content"]
    S[V:, V:] = p["s_special_uninformative"]
    return S


def attention_loss(S: np.ndarray, sample: PopulationSample, cfg: Config, loss: str,
                   chunk: int = 50_000) -> tuple[float, float]:
    """Population loss (mean, s.e.) of regime A for any score matrix S (n_vocab, n_vocab),
    computed directly as softmax_y(S[x, y] + log c[y]) over the vocabulary (no symmetry used)."""
    d = cfg.data
    V, nv = d.V, d.n_vocab
    own = owner_topic(cfg)
    if own is None or (own < 0).any():
        raise ValueError("attention_loss: the topic-block W^V needs disjoint topic supports")
    size = np.bincount(own, minlength=d.T)  # words per topic: logits of a topic's words
    Bt = np.zeros((nv, d.T))
    Bt[np.arange(V), own] = 1.0
    per = np.zeros(len(sample.q_doc))
    for i in range(0, len(per), chunk):
        doc, x = sample.q_doc[i:i + chunk], sample.q_token[i:i + chunk]
        c = sample.key_counts[doc]
        with np.errstate(divide="ignore"):
            sc = S[x] + np.log(c)
        a = np.exp(sc - sc.max(1, keepdims=True))
        a /= a.sum(1, keepdims=True)
        A = a @ Bt
        At = A[np.arange(len(x)), own[sample.q_target[i:i + chunk]]]
        if loss == "ce":
            per[i:i + chunk] = np.log(np.exp(A) @ size + nv - V) - At
        else:
            per[i:i + chunk] = (A * A) @ size - 2 * At + 1
    w = sample.q_weight
    num = np.bincount(sample.q_doc, weights=per * w, minlength=sample.n_docs)
    mean, se = ratio_se(num, sample.doc_query_weight())
    return mean, (0.0 if sample.estimator == "enumeration" else se)


def attention_ratio(p: dict, sample: PopulationSample, cfg: Config) -> float:
    """Mean attention on a same-topic key / mean attention on a cross-topic key, pooled over
    (query, key) pairs: queries = every position showing a content word (keys and, under
    key_set=unselected, selected positions showing a kept/random content word); keys = content
    keys other than the query position itself."""
    d = cfg.data
    V = d.V
    own = owner_topic(cfg)
    kc = sample.key_counts[:, :V]
    n_topic = kc @ np.eye(d.T)[own]
    n_sp = sample.key_counts[:, V:].sum(1, keepdims=True)
    n_all = kc.sum(1, keepdims=True)
    e_self, e_same, e_sc = np.exp(p["s_self"]), np.exp(p["s_same"]), np.exp(p["s_special_content"])
    w = sample.doc_weight[:, None]
    ntx = n_topic[:, own]  # (D, V): keys of word w's topic
    Z = kc * e_self + (ntx - kc) * e_same + (n_all - ntx) + n_sp * e_sc

    def pooled(mult, is_key):
        # mult (D, V) queries showing word w; is_key: whether such a query is itself a key
        same_att = mult * ((kc - is_key) * e_self + (ntx - kc) * e_same) / np.maximum(Z, 1e-300)
        cross_att = mult * (n_all - ntx) / np.maximum(Z, 1e-300)
        return ((w * same_att).sum(), (w * mult * (ntx - is_key)).sum(),
                (w * cross_att).sum(), (w * mult * (n_all - ntx)).sum())

    parts = [pooled(kc, 1.0)]
    if cfg.mask.key_set == "unselected":
        sel = np.zeros_like(kc)
        ok = sample.q_token < V
        np.add.at(sel, (sample.q_doc[ok], sample.q_token[ok]), 1.0)
        parts.append(pooled(sel, 0.0))
    sa, sn, ca, cn = (sum(x[i] for x in parts) for i in range(4))
    return float((sa / sn) / (ca / cn)) if sn > 0 and cn > 0 and ca > 0 else float("nan")


@memoized(("data", "mask", "model"))
def attention_optimum_A(cfg: Config, *, loss: str | None = None,
                        sample: PopulationSample | None = None, estimator: str = "auto",
                        n_docs: int = 20000, seed: int = 0, bound: float = 20.0
                        ) -> AttentionOptimum:
    """Optimal symmetric scores of regime A by full-batch damped Newton on a fixed population sample
    (exact enumeration for tiny configs, else n_docs Monte Carlo documents)."""
    require_symmetric(cfg, "regime A")
    loss = loss or cfg.model.loss
    if sample is None:
        sample = population(cfg, estimator, n_docs, seed)
    d = cfg.data
    qn = _query_data(sample, cfg)
    q = {k: jnp.asarray(v, jnp.int32 if k in ("tx", "tstar", "doc") else jnp.float32)
         for k, v in qn.items()}
    W = float(qn["w"].sum())
    nsi = d.n_vocab - d.V
    D = sample.n_docs

    def per_doc(s, q):
        per = _per_query(s, q, d.V // d.T, nsi, loss) * q["w"]
        return jax.ops.segment_sum(per, q["doc"], num_segments=D)

    per_doc_j = jax.jit(per_doc)  # one compilation for every evaluation below
    fun = lambda u, q: jnp.sum(per_doc(bound * jnp.tanh(u / bound), q)) / W
    # the tied family (s_self = s_same) first: a well-behaved start for the non-convex search
    tie = jnp.array([0, 0, 1, 2])
    u3, _, it3 = newton_minimize(lambda u, q: fun(u[tie], q), np.zeros(3), q)
    # the landscape in (s_self, s_same) is multimodal (a basin with s_self -> +inf exists):
    # joint fits from the tied optimum and from the best point of a coarse grid; keep the best
    fun_j = jax.jit(fun)
    val = lambda x: float(fun_j(jnp.asarray(x, jnp.float32), q))
    to_u = lambda x: bound * np.arctanh(np.clip(np.asarray(x) / bound, -0.999, 0.999))
    grid = [np.array([to_u(a_), to_u(b_), u3[1], u3[2]])
            for a_ in (-12.0, -6.0, -3.0, -1.0, 0.0, 1.0, 3.0, 6.0, 12.0)
            for b_ in (-3.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 9.0)]
    tied0 = u3[np.array([0, 0, 1, 2])]
    best_grid = min(grid, key=val)
    starts = [tied0] + ([best_grid] if val(best_grid) < val(tied0) else [])
    u, _, iters = min((newton_minimize(fun, x0, q) for x0 in starts), key=lambda r: r[1])
    iters += it3
    s = bound * np.tanh(u / bound)
    content = qn["tx"] >= 0
    visible = np.array([
        (content & (qn["k_self"] > 0)).any(),
        (content & (qn["nt"][np.arange(len(content)), np.maximum(qn["tx"], 0)]
                    - qn["k_self"] > 0)).any(),
        (content & (qn["n_sp"] > 0)).any(), (~content & (qn["n_sp"] > 0)).any()])
    s = np.where(visible, s, 0.0)
    docs = lambda x: np.asarray(per_doc_j(jnp.asarray(x, jnp.float32), q), np.float64)
    F = lambda x: float(docs(x).sum()) / W
    best = F(s)
    limits = np.zeros(4, bool)
    for i in np.nonzero(visible & (np.abs(s) > 5.0))[0]:
        far = s.copy()
        far[i] = np.sign(s[i]) * bound
        limits[i] = F(far) - best < LIMIT_TOL
    tied = s.copy()
    tied[0] = s[1]
    self_tie_cost = F(tied) - best
    plateau, plateau_se = ratio_se(docs(s), sample.doc_query_weight())
    uniform_loss, uniform_se = ratio_se(docs(np.zeros(4)), sample.doc_query_weight())
    se = np.full(4, np.nan)
    free = visible & ~limits
    if sample.estimator == "enumeration":
        se = np.where(free, 0.0, np.nan)
        plateau_se = uniform_se = 0.0
    elif free.any():
        fixed = jnp.asarray(s, jnp.float32)
        idx = np.nonzero(free)[0]
        sub = lambda x, q: per_doc(fixed.at[idx].set(x), q)
        cov = sandwich_cov(sub, s[idx], q, W)
        se[idx] = np.sqrt(np.clip(np.diag(cov), 0, None))
    p = dict(zip(NAMES, map(float, s)))
    notes = {"family": "S: self s_self, same topic s_same, cross topic 0, special keys "
                       "s_special_content / s_special_uninformative; MASK row uniform on content",
             "solver": f"full-batch damped Newton on u, s = {bound} tanh(u/{bound}), {iters} "
                       "iterations",
             "loss": loss, "non_convex": "optimum within the symmetric family (loss not convex "
                                         "in S)"}
    pt = dict(zip(NAMES, map(float, tied)))
    return AttentionOptimum(
        loss, p, dict(zip(NAMES, map(float, se))),
        tuple(n for n, b in zip(NAMES, limits) if b),
        tuple(n for n, v in zip(NAMES, visible) if not v),
        p["s_same"], float(se[1]), float(np.exp(p["s_same"])), attention_ratio(p, sample, cfg),
        attention_ratio(pt, sample, cfg), float(self_tie_cost),
        plateau, plateau_se, uniform_loss, score_matrix(cfg, p),
        describe(cfg, describe_sample(sample), **notes), uniform_loss_se=uniform_se)
