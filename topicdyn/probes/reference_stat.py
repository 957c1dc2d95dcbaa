"""The authors' topic-attention statistic, emulated exactly (BRIEF §5; their
`src/inspect_result.py`, `compare_topic_and_non_topic_attention`).

Their protocol, step by step, and how it maps onto our documents:
- evaluation documents are *unmasked* (mask_prob = 0), so every position is a key of every
  query, itself included; a document file line is its words then END, the loader puts START in
  front and drops the last token when nothing is masked: START + the words, cut to its first
  100 tokens;
- every position is a query and every position a key: their stop-token filter compares token
  ids with the strings 'PAD', 'MASK', 'START', 'END', so it never removes anything and START
  takes part;
- a pair (i, j) is "same token" when i == j or the tokens are equal, whatever their topics; else
  it is left out when either token has no topic; else "topic" when the topics agree, else
  "non topic";
- the topic of a token is looked up in the word -> topic table {w: w // v} with the token's
  *vocabulary id* (PAD 0, MASK 1, START 2, END 3, word w -> w + 4): ids below V get topic
  id // v (START is a topic-0 word, and word w is read as word w + 4), the last four words'
  ids (V .. V + 3) are not in the table and have no topic;
- the statistic is the mean attention of each category, each weight times len / 100 (1 for
  100-token documents); the authors compare
  topic with non-topic attention: `ref_ratio` = topic / non topic.

`ref_ratio_fixed` is the same protocol with correct topics (specials have none): the difference
between the two is the labelling bug alone.

Where the fast formulation is exact (no positional information: attention depends on the query
token and the document's key counts only) the statistic is computed in vocabulary space
(`prepare_rows`, `probe_reference_rows`): every category depends on the two tokens alone, so a
category sum over (query, key) pairs is sum_{b,x,v} w_b c_b[x] A(x, b)[v] [cat(x, v)] with
A(x, b) the attention of token x in document b summed over the keys holding v (probes/vocab.py)
and c_b the token counts of the cut document; tests/test_vocab_probes.py checks it against the
model's own attention matrices.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from topicdyn.config import Config
from topicdyn.masking import MLMBatch
from topicdyn.models.fast import NEG_INF, fast_supported
from topicdyn.probes.stats import doc_token_counts
from topicdyn.xla import device_array

CUT = 100  # tokens per document in their statistic
N_SPECIAL = 4  # their vocabulary: PAD, MASK, START, END, then the words


def reference_labels(cfg: Config) -> np.ndarray:
    """(n_vocab,) topic of each of our token ids as their statistic computes it (-1: none)."""
    d = cfg.data
    V = d.V
    their_id = np.empty(d.n_vocab, np.int64)
    their_id[:V] = np.arange(V) + N_SPECIAL
    their_id[[d.PAD, d.MASK, d.START, d.END]] = [0, 1, 2, 3]
    return np.where(their_id < V, their_id // d.v, -1)


def applies(cfg: Config) -> bool:
    """Their documents start with START: the emulation needs data.start_end; their labelling
    is of a generator's topics (none for real text)."""
    return bool(cfg.data.start_end) and cfg.data.source == "lda"


def reference_batch(cfg: Config, batch) -> MLMBatch:
    """Their view of our evaluation documents (numpy MLMBatch of length min(100, L))."""
    d = cfg.data
    clean = np.asarray(batch.inputs if cfg.mask.objective == "causal" else batch.targets)
    valid = np.asarray(batch.valid)
    n_words = valid.sum(1) - 2  # START and END around each document
    L = min(CUT, clean.shape[1])
    pos = np.arange(L)[None, :]
    ok = pos < np.minimum(n_words + 1, L)[:, None]  # START + the words (END dropped), cut
    tokens = np.where(ok, clean[:, :L], d.PAD).astype(np.int32)
    B = len(tokens)
    z = np.zeros((B, L), bool)
    return MLMBatch(tokens, tokens, z, ok, np.zeros((B, L), np.int32),
                    np.full((B, L), -1, np.int32), np.zeros((B, d.T), np.float32), ok)


def reference_stats(attn, tokens, ok, labels) -> dict:
    """Mean attention per category and topic / non-topic; attn (B, H, L, L) (heads averaged),
    tokens (B, L), ok (B, L) positions of the cut document, labels (n_vocab,) topic or -1."""
    a = jnp.mean(attn, axis=1) * (jnp.sum(ok, -1) / CUT)[:, None, None]  # their len/100
    lab = labels[tokens]
    pair = ok[:, :, None] & ok[:, None, :]
    L = tokens.shape[1]
    same_tok = (tokens[:, :, None] == tokens[:, None, :]) | jnp.eye(L, dtype=bool)[None]
    has = (lab[:, :, None] >= 0) & (lab[:, None, :] >= 0)
    same_top = lab[:, :, None] == lab[:, None, :]
    cats = {"same_token": pair & same_tok, "same_topic": pair & ~same_tok & has & same_top,
            "cross_topic": pair & ~same_tok & has & ~same_top}
    out = {k: jnp.sum(jnp.where(m, a, 0.0)) / jnp.maximum(jnp.sum(m), 1) for k, m in cats.items()}
    out["ratio"] = out["same_topic"] / jnp.maximum(out["cross_topic"], 1e-30)
    return out


def probe_reference(params, cfg: Config, ref: dict, variant) -> dict:
    """ref_* (their labelling) and ref_ratio_fixed (correct labels), their protocol; ref holds
    reference_batch's arrays and both label tables."""
    b = ref["batch"]
    _, acts = variant.apply(params, b, cfg, capture=True)
    if "attention" not in acts:
        return {}
    out = {f"ref_{k}": v for k, v in
           reference_stats(acts["attention"], b.inputs, b.valid, ref["labels"]).items()}
    out["ref_ratio_fixed"] = reference_stats(acts["attention"], b.inputs, b.valid,
                                             ref["labels_fixed"])["ratio"]
    return out


LABELLINGS = ("ref_", "ref_fixed_")  # their labels, the correct ones (prepare_rows' order)
CATEGORIES = ("same_token", "same_topic", "cross_topic")


def prepare_rows(cfg: Config, rb: MLMBatch, labels: np.ndarray,
                 labels_fixed: np.ndarray) -> dict | None:
    """Vocabulary-space constants of the statistic on reference_batch rb, with their labels
    and the correct ones (numpy), or None where the fast formulation is not exact for cfg."""
    if not fast_supported(cfg):
        return None
    nv = cfg.data.n_vocab
    ok = np.asarray(rb.valid).astype(bool)
    c = doc_token_counts(rb.inputs, ok, nv)  # every position is a query and a key
    r_doc, r_x = np.nonzero(c)  # (document, token) cells: every position is a query
    cr = c[r_doc]
    coef = c[r_doc, r_x] * (ok.sum(1) / CUT)[r_doc]  # queries of the cell x their len / 100
    query = np.zeros((len(r_x), nv))
    query[np.arange(len(r_x)), r_x] = coef
    eye = np.eye(nv, dtype=bool)
    cats = []
    for lab in (np.asarray(labels), np.asarray(labels_fixed)):
        has = (lab >= 0)[:, None] & (lab >= 0)[None, :]
        same = lab[:, None] == lab[None, :]
        for cat in (eye, ~eye & has & same, ~eye & has & ~same):
            pairs = max(float(np.einsum("bx,xv,bv->", c, cat, c)), 1.0)
            cats.append(cat / pairs)
    f32 = np.float32
    return {"row_x": device_array(r_x, np.int32),
            "row_logc": device_array(np.where(cr > 0, np.log(np.maximum(cr, 1.0)), NEG_INF), f32),
            "row_has_key": device_array(cr.sum(1) > 0, f32),
            "row_a_uniform": device_array(cr / np.maximum(cr.sum(1, keepdims=True), 1.0), f32),
            "row_query": device_array(query, f32),
            "cat_weights": device_array(np.stack(cats), f32)}


def probe_reference_rows(params, cfg: Config, rows: dict) -> dict:
    """= probe_reference, from prepare_rows' constants."""
    from topicdyn.probes.vocab import row_attention

    A = row_attention(params, cfg, rows)  # (cells, nv)
    M = rows["row_query"].T @ A  # (nv, nv): attention mass from query token x to key token v
    sums = jnp.einsum("xv,cxv->c", M, rows["cat_weights"]).reshape(len(LABELLINGS), -1)
    out = {}
    for tag, s in zip(LABELLINGS, sums):
        st = dict(zip(CATEGORIES, s))
        ratio = st["same_topic"] / jnp.maximum(st["cross_topic"], 1e-30)
        if tag == "ref_":
            out.update({f"ref_{k}": v for k, v in st.items()}, ref_ratio=ratio)
        else:
            out["ref_ratio_fixed"] = ratio
    return out
