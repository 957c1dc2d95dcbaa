"""The embedding-space probes (EMBEDDING_SPACE.md §3; claims S1-S6 of Singh 2023), registered.

Opt-in: list them in `train.probes` (or `topicdyn probe RUN --probes ...`); they need
mask.key_set=unselected (the query is never a key of a constructed context), and the probes on
constructed contexts (copy, coh, sample, walk) a model without positions (the contexts do not
keep the training positions). Every probe reads the
variant's own `apply` on the evaluation set or on constructed contexts (probes/contexts.py,
constants in probes/singh_setup.py) and logs, beside each model statistic, its exact Bayes
reference on the same contexts (`*_bayes`), so a plot or a verdict compares like with like.

- red     (S1): loss change on the eval set when the query/key groups are zeroed (uniform
                attention at test time), split by query kind. Gamma = L_E - L_A is a comparison
                of runs (the report); its ceiling form uses theory.json `class_ceiling`.
- copy    (S2): copy bias G(O) at [MASK] queries; novel-association ratio B(r) on contexts
                with a word repeated r times.
- coh     (S3): path-coherence defect of two masked words; order s.d. of the chain-rule
                log-likelihood of the held-out words and its gap to the exact value.
- sample  (S3): documents sampled by iterative unmasking vs the generator.
- near    (S4): logits vs log P*(w|O): Pearson, Spearman (ties averaged), KL(P*||P_m), R^2 of
                topic logits on the proportions and on log P*(t|O).
- walk    (S5): composition linearity delta; step-size offset c of the encoding walk.
- concept (S6): topic structure of the input embedding; decoding E[theta|O] from h(O).
- pmi     (S4, S6): Spearman of <e_w, e_w'> with the exact PMI, and of the value map with
                log P(w | w').
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from topicdyn.masking import QUERY_KINDS
from topicdyn.models import get_variant
from topicdyn.models.variant import (CONTEXT_VECTOR, MLM, NO_POSITIONS, TRAINED_ATTENTION,
                                     TRAINED_EMBEDDING, VALUE_MAP, label_tree)
from topicdyn.probes import register
from topicdyn.probes.embedding_space import (concept_stats, copy_bias, mean_se, near_stats,
                                             novel_ratio, ridge_r2, spearman, walk_offset)

ES_PROBES = ("red", "copy", "coh", "sample", "near", "walk", "concept", "pmi")
CHUNK = 64  # constructed contexts run in chunks of this many rows (bounded memory)


def at_queries(params, cfg, batch, qpos, capture: bool = False) -> dict:
    """The variant's own outputs at each row's query position: {"logits": (R, nv)} and with
    capture {"h": (R, d)} (the sown context vector) and {"attn": (R, H, L)} (layer 1)."""
    variant = get_variant(cfg.model.name)
    R = qpos.shape[0]
    c = min(CHUNK, R)
    pad = (-R) % c
    grow = lambda x: jnp.concatenate([x, jnp.repeat(x[-1:], pad, 0)]) if pad else x  # noqa: E731
    chunks = jax.tree.map(lambda x: grow(jnp.asarray(x)).reshape((-1, c) + x.shape[1:]),
                          (batch, qpos))

    def one(args):
        b, q = args
        logits, acts = variant.apply(params, b, cfg, capture=capture)
        i = jnp.arange(c)
        out = {"logits": logits[i, q]}
        if capture and "context" in acts:
            out["h"] = acts["context"][i, q]
        if capture and "attention" in acts:
            out["attn"] = acts["attention"][i, :, q]
        return out

    res = jax.lax.map(one, chunks)
    return jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:])[:R], res)


def _eval_mask_rows(params, ctx, capture: bool = False) -> dict:
    """Outputs at the eval set's [MASK] queries (the rows of es["mask_b"], es["mask_l"])."""
    es, cfg = ctx.es, ctx.cfg
    logits, acts = get_variant(cfg.model.name).apply(params, ctx.batch, cfg, capture=capture)
    b, l = es["mask_b"], es["mask_l"]
    out = {"logits": logits[b, l]}
    if capture and "context" in acts:
        out["h"] = acts["context"][b, l]
    return out


def _logp(logits):
    return jax.nn.log_softmax(logits, -1)


@register("red", requires=(TRAINED_ATTENTION, MLM), separate=True)
def probe_red(params, params0, ctx) -> dict:
    """P-red's supporting statistic: eval-set loss with the query/key groups zeroed (uniform
    attention over the keys for the built-in family) minus the loss as trained, per kind."""
    cfg, b = ctx.cfg, ctx.batch
    variant = get_variant(cfg.model.name)
    groups = label_tree(variant, params)
    flat = jax.tree.map(lambda g, x: jnp.zeros_like(x) if g in ("query", "key") else x,
                        groups, params)
    out = {}
    per = []
    for p in (params, flat):
        logits, _ = variant.apply(p, b, cfg)
        lp = jnp.take_along_axis(_logp(logits), b.targets[..., None], -1)[..., 0]
        per.append(-lp)
    for name, sel in [("", b.selected)] + [(f"_{k}", b.selected & (b.kind == c))
                                           for k, c in QUERY_KINDS.items()]:
        n = jnp.maximum(jnp.sum(sel), 1)
        out[f"swap_delta{name}"] = jnp.sum(jnp.where(sel, per[1] - per[0], 0.0)) / n
    return out


@register("copy", requires=(MLM, NO_POSITIONS), separate=True)
def probe_copy(params, params0, ctx) -> dict:
    """P-copy: copy bias G(O) at the eval set's [MASK] queries (Bayes: 0 for disjoint uniform
    topics) and the novel-association ratio B(r) (Bayes: 1), each with its Bayes value on the
    same contexts."""
    es, cfg = ctx.es, ctx.cfg
    V, T = cfg.data.V, cfg.data.T
    wt = jnp.asarray(ctx.word_topic)
    out = {}
    lp = _logp(_eval_mask_rows(params, ctx)["logits"])[:, :V]
    g, info = copy_bias(lp, es["mask_counts"], wt, T)
    out["copy_bias"], out["copy_bias_se"] = mean_se(g, info)  # over the informative queries
    out["copy_bias_rows"] = jnp.sum(info).astype(jnp.float32)
    if "mask_bayes" in es:
        gb, _ = copy_bias(es["mask_bayes"][:, :V], es["mask_counts"], wt, T)
        out["copy_bias_bayes"] = mean_se(gb, info)[0]
    lpn = _logp(at_queries(params, cfg, es["novel_batch"], es["novel_qpos"])["logits"])[:, :V]
    ratio = novel_ratio(lpn, es["novel_a"], es["novel_other"])
    rs = es["novel_rs"]
    n = ratio.shape[0] // len(rs)
    ref = (novel_ratio(es["novel_bayes"][:, :V], es["novel_a"], es["novel_other"])
           if "novel_bayes" in es else None)
    for i, r in enumerate(rs):
        out[f"novel_r{r}"], out[f"novel_r{r}_se"] = mean_se(ratio[i * n:(i + 1) * n])
        if ref is not None:
            out[f"novel_bayes_r{r}"] = jnp.mean(ref[i * n:(i + 1) * n])
    return out


def _coh_stats(lp_target, shape, exact=None) -> dict:
    """Coherence statistics from the log-probabilities of the coh rows' targets (R,)."""
    n_pair, n_chain, K, m = shape
    pair = lp_target[:4 * n_pair].reshape(n_pair, 4)
    defect = jnp.abs(pair[:, 0] + pair[:, 1] - pair[:, 2] - pair[:, 3])
    chain = lp_target[4 * n_pair:].reshape(n_chain, K, m).sum(-1)  # (docs, orders)
    out = {"pair_defect": defect.mean(),
           "pair_defect_se": jnp.std(defect, ddof=1) / jnp.sqrt(defect.shape[0]),
           "order_sd": jnp.std(chain, -1, ddof=1).mean()}
    if exact is not None:
        out["exact_gap"] = jnp.mean(jnp.abs(chain.mean(-1) - exact)) / m
    return out


@register("coh", requires=(MLM, NO_POSITIONS), separate=True)
def probe_coh(params, params0, ctx) -> dict:
    """P-coh: path-coherence defect |[log P(w|O) + log P(w'|O+w)] - [log P(w'|O) +
    log P(w|O+w')]| (0 for any single joint distribution), the s.d. over orders of the
    chain-rule log-likelihood of the held-out words and its gap (nats per word) to the exact
    log P(x_S | O); the Bayes predictor's values on the same contexts (`*_bayes`)."""
    es = ctx.es
    if "coh_batch" not in es:
        return {}
    t = es["coh_target"][:, None]
    lp = _logp(at_queries(params, ctx.cfg, es["coh_batch"], es["coh_qpos"])["logits"])
    out = _coh_stats(jnp.take_along_axis(lp, t, -1)[:, 0], es["coh_shape"], es.get("coh_exact"))
    if "coh_bayes" in es:
        ref = _coh_stats(jnp.take_along_axis(es["coh_bayes"], t, -1)[:, 0], es["coh_shape"],
                         es.get("coh_exact"))
        out.update({f"{k}_bayes": v for k, v in ref.items() if not k.endswith("_se")})
    return out


@register("near", requires=(MLM,), separate=True)
def probe_near(params, params0, ctx) -> dict:
    """P-near at the eval set's [MASK] queries: Pearson and Spearman of the content logits with
    log P*(w|O), KL(P* || P_m), and R^2 of the topic-level logits on the topic proportions and
    on log P*(t|O) (topic logit: logsumexp over the topic's words, centred per query)."""
    es, cfg = ctx.es, ctx.cfg
    if "mask_bayes" not in es:
        return {}
    V, T = cfg.data.V, cfg.data.T
    z = _eval_mask_rows(params, ctx)["logits"]
    ref = es["mask_bayes"]
    rows = jnp.ones(z.shape[0], bool)
    out = near_stats(z, ref, rows, V)
    p = jnp.exp(ref[:, :V])
    lpm = _logp(z)[:, :V]
    out["near_kl"] = jnp.mean(jnp.sum(jnp.where(p > 0, p * (ref[:, :V] - lpm), 0.0), -1))
    onehot = jnp.asarray(ctx.word_topic)[:, None] == jnp.arange(T)[None, :]
    zt = jax.nn.logsumexp(jnp.where(onehot[None], z[:, :V, None], -jnp.inf), 1)  # (R, T)
    lt = jax.nn.logsumexp(jnp.where(onehot[None], ref[:, :V, None], -jnp.inf), 1)
    zt = zt - zt.mean(-1, keepdims=True)

    def r2(x):  # pooled simple regression of the centred topic logits on x (R, T)
        ok = jnp.isfinite(x)
        x = jnp.where(ok, x - jnp.sum(jnp.where(ok, x, 0), -1, keepdims=True)
                      / jnp.maximum(ok.sum(-1, keepdims=True), 1), 0.0)
        y = jnp.where(ok, zt, 0.0)
        y = y - jnp.sum(y, -1, keepdims=True) / jnp.maximum(ok.sum(-1, keepdims=True), 1)
        y = jnp.where(ok, y, 0.0)
        c = jnp.sum(x * y) / jnp.maximum(jnp.sqrt(jnp.sum(x * x) * jnp.sum(y * y)), 1e-30)
        return c * c

    out["near_r2_proportion"] = r2(es["mask_prop"])
    out["near_r2_log_posterior"] = r2(lt)
    return out


@register("walk", requires=(MLM, NO_POSITIONS, CONTEXT_VECTOR), separate=True)
def probe_walk(params, params0, ctx) -> dict:
    """P-walk: composition linearity delta = ||h(O) - l h(O1) - (1-l) h(O2)|| / ||h(O)|| per
    head slice (l: the layer-1 attention share of O1's keys, or |O1|/|O| without attention),
    and the offset c of the step sizes of the walk h(x[:n]) (Bayes: the same fit to
    E[theta | x[:n]], Dirichlet prior only: under k-topics with equal weights the posterior
    mean moves only when a new topic appears; mean pooling with s sink keys (START/END): about
    s)."""
    es, cfg = ctx.es, ctx.cfg
    res = at_queries(params, cfg, es["walk_batch"], es["walk_qpos"], capture=True)
    n_doc, n_w = es["walk_shape"]
    h = res["h"]
    walk = h[:n_doc * n_w].reshape(n_doc, n_w, -1)
    steps = jnp.linalg.norm(walk[:, 1:] - walk[:, :-1], axis=-1).mean(0)
    out = {"walk_c": walk_offset(steps)}
    if "walk_bayes_post" in es and cfg.data.prior == "dirichlet":
        post = es["walk_bayes_post"][:n_doc * n_w].reshape(n_doc, n_w, -1)
        out["walk_c_bayes"] = walk_offset(
            jnp.linalg.norm(post[:, 1:] - post[:, :-1], axis=-1).mean(0))
    comp = h[n_doc * n_w:].reshape(-1, 3, h.shape[-1])
    H = cfg.model.n_heads
    if "attn" in res:
        a = res["attn"][n_doc * n_w:].reshape(-1, 3, H, res["attn"].shape[-1])[:, 0]
        lam = jnp.sum(jnp.where(es["walk_o1"][:, None], a, 0.0), -1)  # (docs, H)
    else:
        lam = jnp.broadcast_to(es["walk_l_uniform"][:, None], (comp.shape[0], H))
    d = comp.shape[-1]
    dh = d // H
    lam_d = jnp.repeat(lam, dh, -1)[:, :d] if d % H == 0 else lam[:, :1]
    mix = lam_d * comp[:, 1] + (1.0 - lam_d) * comp[:, 2]
    delta = jnp.linalg.norm(comp[:, 0] - mix, axis=-1) / jnp.maximum(
        jnp.linalg.norm(comp[:, 0], axis=-1), 1e-30)
    out["walk_delta"] = delta.mean()
    return out


@register("concept", requires=(MLM, TRAINED_EMBEDDING, CONTEXT_VECTOR), separate=True)
def probe_concept(params, params0, ctx) -> dict:
    """P-concept: topic structure of the content rows of the input embedding (variance share,
    held-out linear topic probe, principal angles, participation ratio) and held-out R^2 of
    decoding E[theta | O] (and, for comparison, the raw proportions) from h(O) at the eval
    set's [MASK] queries (trained on the first half of the queries, tested on the rest)."""
    es, cfg = ctx.es, ctx.cfg
    V, T = cfg.data.V, cfg.data.T
    E = get_variant(cfg.model.name).matrices(params, cfg)["E"][:V]
    out = concept_stats(E, jnp.asarray(ctx.word_topic), T, es["concept_train"])
    h = _eval_mask_rows(params, ctx, capture=True).get("h")
    if h is not None and h.shape[0] >= 8:
        half = h.shape[0] // 2
        for name, key in (("decode_posterior", "mask_post"), ("decode_proportion", "mask_prop")):
            if key in es:
                Y = es[key]
                out[f"concept_{name}"] = ridge_r2(h[:half], Y[:half], h[half:], Y[half:])
    return out


@register("pmi", requires=(MLM, VALUE_MAP), separate=True)
def probe_pmi(params, params0, ctx) -> dict:
    """P-pmi: Spearman of the centred embedding Gram <e_w, e_w'> (w != w') with the exact PMI,
    and of the layer-1 value map entries [w', w] with log P(w | w') (all content pairs, each
    row centred: a row constant is invisible to the loss)."""
    es, cfg = ctx.es, ctx.cfg
    V = cfg.data.V
    mats = get_variant(cfg.model.name).matrices(params, cfg)
    off = np.nonzero(~np.eye(V, dtype=bool))  # static indices (a traced mask cannot index)
    out = {}
    if "E" in mats:
        E = mats["E"][:V] - mats["E"][:V].mean(0)
        out["pmi_gram_spearman"] = spearman((E @ E.T)[off], es["pmi"][off])
    if "value_map/1" in mats:  # a constant added to a row never reaches the softmax: centred
        M = mats["value_map/1"][:V, :V]
        lc = jnp.where(jnp.isfinite(es["log_cond"]), es["log_cond"], -1e4)
        out["pmi_value_spearman"] = spearman((M - M.mean(1, keepdims=True)).reshape(-1),
                                             (lc - lc.mean(1, keepdims=True)).reshape(-1))
    return out


def _doc_stats(words, cfg, wt):
    """Per document: distinct topics, same-topic pair share, exact log-likelihood per word
    (disjoint supports; the reference formula of theory.references in jax)."""
    from jax.scipy.special import gammaln

    d = cfg.data
    T, N = d.T, words.shape[1]
    n = jax.nn.one_hot(wt[words], T).sum(1)  # (R, T)
    distinct = jnp.sum(n > 0, -1).astype(jnp.float32)
    pair = jnp.sum(n * (n - 1), -1) / (N * (N - 1))
    out = {"distinct": distinct, "pair_share": pair}
    from topicdyn.theory.common import beta_matrix, owner_topic
    if owner_topic(cfg) is not None:
        lb = jnp.log(jnp.asarray(beta_matrix(cfg), jnp.float32))
        emit = jnp.sum(lb[wt[words], words], -1)
        a = d.alpha

        def dirmult(K):
            return (gammaln(K * a) - gammaln(K * a + N)
                    + jnp.sum(jnp.where(n > 0, gammaln(a + n) - gammaln(a), 0.0), -1))

        if d.prior == "dirichlet":
            seq = dirmult(T)
        else:
            k = d.k
            lc = lambda p, q: gammaln(p + 1.0) - gammaln(q + 1.0) - gammaln(p - q + 1.0)  # noqa
            share = lc(T - distinct, k - distinct) - lc(float(T), float(k))
            per = -N * jnp.log(float(k)) if d.k_weights == "equal" else dirmult(k)
            seq = jnp.where(distinct <= k, share + per, -jnp.inf)
        out["loglik"] = (seq + emit) / N
    return out


@register("sample", requires=(MLM, NO_POSITIONS), separate=True)
def probe_sample(params, params0, ctx) -> dict:
    """P-sample: N_SAMPLE documents of sample_len words drawn by iterative unmasking (each word
    from P_m(. | words so far) over the content words, a fixed key) against generator
    documents: mean distinct topics, same-topic pair share (the topic-level co-occurrence
    summary of the PMI), exact log-likelihood per word (mean and s.e.), and the total-variation
    distance of the distinct-topics histogram; `*_gen`: the generator's values; `tv_control`:
    the TV of an exact sampler at the same sample size (the Monte Carlo scale)."""
    from topicdyn.masking import MLMBatch
    from topicdyn.probes.singh_setup import N_SAMPLE, SEED

    es, cfg = ctx.es, ctx.cfg
    d = cfg.data
    V, N = d.V, es["sample_len"]
    S = 1 if d.start_end else 0
    L = N + 1 + 2 * S  # the longest context of the walk: N words, the query, START/END
    variant = get_variant(cfg.model.name)
    pos = jnp.arange(L)[None, :]
    wt = jnp.asarray(ctx.word_topic)
    key = jax.random.PRNGKey(SEED)

    def step(j, words):
        c = pos - S
        w = jnp.take_along_axis(words, jnp.clip(c, 0, N - 1).repeat(N_SAMPLE, 0), 1)
        inputs = jnp.where((c >= 0) & (c < j), w, d.PAD)
        inputs = jnp.where(c == j, d.MASK, inputs)
        keys = (c >= 0) & (c < j)
        if S:
            inputs = jnp.where(pos == 0, d.START, jnp.where(c == j + 1, d.END, inputs))
            keys = keys | (pos == 0) | (c == j + 1)
        keys = jnp.broadcast_to(keys, inputs.shape)
        sel = jnp.broadcast_to(c == j, inputs.shape)
        b = MLMBatch(inputs.astype(jnp.int32), inputs.astype(jnp.int32), sel, keys,
                     sel.astype(jnp.int32), jnp.full(inputs.shape, -1, jnp.int32),
                     jnp.zeros((N_SAMPLE, d.T)), inputs != d.PAD)
        logits, _ = variant.apply(params, b, cfg)
        zq = logits[:, S + j, :V]
        new = jax.random.categorical(jax.random.fold_in(key, j), zq)
        return words.at[:, j].set(new.astype(jnp.int32))

    words = jax.lax.fori_loop(0, N, step, jnp.zeros((N_SAMPLE, N), jnp.int32))
    out = {}
    stats = _doc_stats(words, cfg, wt)
    ref = _doc_stats(es["ref_words"], cfg, wt)
    ctl = _doc_stats(es["control_words"], cfg, wt)
    for k in stats:  # log-likelihood: over the possible documents (k_topics: <= k topics)
        ok, ok_ref = jnp.isfinite(stats[k]), jnp.isfinite(ref[k])
        out[f"sample_{k}"], out[f"sample_{k}_se"] = mean_se(jnp.where(ok, stats[k], 0.0), ok)
        out[f"sample_{k}_gen"], out[f"sample_{k}_gen_se"] = mean_se(
            jnp.where(ok_ref, ref[k], 0.0), ok_ref)
    if "loglik" in stats:
        out["sample_impossible"] = jnp.mean(~jnp.isfinite(stats["loglik"]))
    T = d.T

    def hist(x):
        return jax.nn.one_hot(x.astype(jnp.int32), T + 1).mean(0)

    h_ref = hist(ref["distinct"])
    out["sample_tv"] = 0.5 * jnp.sum(jnp.abs(hist(stats["distinct"]) - h_ref))
    out["sample_tv_control"] = 0.5 * jnp.sum(jnp.abs(hist(ctl["distinct"]) - h_ref))
    return out
