"""Config discovery: every field with its value, default, allowed values and a one-line help
(`topicdyn config`), and "did you mean ...?" for names that are not fields.

The allowed values are not a second copy of the rules: they are the text of the validation
error itself, obtained by giving the field a value no check accepts (so they follow the
current config, e.g. data.N_max's lower bound is data.N_min).
"""
from __future__ import annotations

import dataclasses
import difflib

from topicdyn.config.checks import ConfigError
from topicdyn.config.sections import SECTIONS, Config

# one line per field: what it is (the validation error says what values it takes)
FIELD_HELP = {
    "data.T": "number of topics",
    "data.v": "words per topic",
    "data.topic_words": "topic-word matrices: disjoint uniform blocks, overlapping, Zipf within "
                        "a topic, or explicit (data.beta)",
    "data.overlap": "overlap mode: words shared by neighbouring topics",
    "data.zipf_s": "zipf mode: P(word of rank r within its topic) ~ r^-s",
    "data.beta": "explicit mode: the T x V topic-word matrix",
    "data.prior": "topic proportions: Dirichlet(alpha) or k topics per document",
    "data.alpha": "Dirichlet concentration per topic",
    "data.k": "k_topics prior: topics per document",
    "data.k_weights": "k_topics prior: weights Dirichlet(alpha) over the k topics, or equal",
    "data.N_min": "shortest document (content words)",
    "data.N_max": "longest document (content words)",
    "data.start_end": "wrap each document in START ... END",
    "data.batch_size": "documents per training step",
    "data.labels": "explicit mode: the topic each word counts under in the probes (-1: none)",
    "data.source": "lda: documents from the generator; corpus: windows of real text "
                   "(data.corpus)",
    "data.corpus": "corpus source: gensim:wiki250 (shipped with gensim) or a text file, one "
                   "document per line",
    "data.vocab_size": "corpus source: content words kept (the most frequent)",
    "data.oov": "corpus source: other words dropped, or mapped to UNK (the last content id)",
    "data.heldout": "corpus source: share of the articles held out (evaluation)",
    "data.split": "corpus source: articles the training batches come from",
    "data.label_threshold": "corpus source: a word's LDA topic label counts where "
                            "P(topic | word) >= this",
    "data.lda_passes": "corpus source: gensim LdaModel passes of the label fit",
    "mask.p_mask": "each content position is selected for the loss with this probability",
    "mask.p_replace_mask": "a selected position shows [MASK] with this probability ...",
    "mask.p_replace_random": "... or a random token ...",
    "mask.p_keep": "... or its own token (the three sum to 1)",
    "mask.random_source": "random tokens drawn from all ids (the reference code) or content "
                          "words only",
    "mask.key_set": "attention keys: the unselected positions (reference) or every visible one",
    "mask.objective": "mlm: loss at selected positions; causal: next-token prediction",
    "model.name": "the model variant (topicdyn.models) or package.module:attribute",
    "model.d_model": "width (null: the vocabulary size, as one-hot parts need)",
    "model.n_heads": "attention heads",
    "model.n_layers": "attention layers",
    "model.positional": "positional embedding added to the token embedding",
    "model.embedding": "token embedding trained, or fixed one-hot",
    "model.attention": "attention trained, or uniform (W^Q = W^K = 0, frozen)",
    "model.value": "W^V trained, identity, or the fixed topic-block matrix (regime A)",
    "model.decoder": "decoder trained, identity, or tied to the embedding",
    "model.residual": "residual connection around attention",
    "model.layernorm": "LayerNorm after each layer",
    "model.loss": "cross-entropy or squared loss",
    "model.impl": "training loss: fastest exact kernel (auto), the definition, or fast only",
    "model.init_scale": "std of the normal init of every trained matrix",
    "model.init_embedding": "init std of the embedding (null: init_scale)",
    "model.init_query": "init std of W^Q (null: init_scale)",
    "model.init_key": "init std of W^K (null: init_scale)",
    "model.init_value": "init std of W^V (null: init_scale)",
    "model.init_decoder": "init std of the decoder (null: init_scale)",
    "model.init_position": "init std of learned positions (null: init_scale)",
    "optim.name": "optimiser",
    "optim.lr": "learning rate",
    "optim.schedule": "learning-rate schedule over train.steps",
    "optim.warmup_steps": "warmup steps of warmup_cosine",
    "optim.b1": "Adam beta1",
    "optim.b2": "Adam beta2",
    "optim.eps": "Adam epsilon",
    "optim.momentum": "SGD momentum",
    "optim.weight_decay": "AdamW decoupled weight decay",
    "optim.grad_clip": "global gradient-norm clipping (null: none)",
    "optim.group_lr": "per-group learning-rate multipliers, [[group, factor], ...]",
    "optim.freeze": "groups held at their init, on top of the model's fixed ones",
    "optim.unfreeze_at": "[[group, step], ...]: the group is frozen until that step",
    "train.steps": "training steps",
    "train.seed": "seed of the first ensemble member",
    "train.n_seeds": "ensemble members (seeds seed..seed+n-1) trained together under vmap",
    "train.log_every": "a metrics row every this many steps (and at checkpoints); its loss "
                       "averages the steps since the last multiple",
    "train.ckpt_log_points": "log-spaced checkpoints in [1, ckpt_linear_from]",
    "train.ckpt_linear_from": "where linearly spaced checkpoints begin",
    "train.ckpt_every": "spacing of the linear checkpoints",
    "train.ckpt_steps": "explicit checkpoint steps (replace the schedule; 0 and the last "
                        "step are added)",
    "train.chunk": "steps per compiled chunk (capacity; shorter chunks are masked)",
    "train.n_eval": "documents of the fixed evaluation set (probes, eval-set theory, figures)",
    "train.n_pop_eval": "fresh documents of the population loss estimate (0: none)",
    "train.probes": "probes run at every checkpoint (topicdyn.probes registry names)",
    "preset": "a label (part of the default run directory name)",
}


def field_names() -> list[str]:
    """Every config field as SECTION.FIELD, in declaration order, then `preset`."""
    return [f"{s}.{f.name}" for s, cls in SECTIONS.items()
            for f in dataclasses.fields(cls)] + ["preset"]


class _Unacceptable:
    def __repr__(self):
        return "<?>"


_PROBE = _Unacceptable()
# values no check accepts, tried in turn: the most informative error text is kept (a list
# element that is not a group name reaches the check naming the variant's groups, ...)
_CANDIDATES = (_PROBE, ("?",), (_PROBE,), (("?", 1.0),), (("?", 0),), "?", "")


def allowed(cfg: Config, name: str) -> str:
    """What field `name` (SECTION.FIELD or preset) accepts in cfg: the text its validation
    error gives, e.g. 'an integer in [1, 4096]'."""
    texts = []
    for bad in _CANDIDATES:
        try:
            if name == "preset":
                dataclasses.replace(cfg, preset=bad)
            else:
                section, fname = name.split(".")
                sec = dataclasses.replace(getattr(cfg, section), **{fname: bad})
                dataclasses.replace(cfg, **{section: sec})
        except ConfigError as e:
            msg = str(e)
            if msg.startswith(f"{name}: ") or msg.startswith(f"{name}+"):
                text = msg.split(": ", 1)[1]
                text = text.removeprefix("must be ")
                if ", got " in text:
                    text = text.rsplit(", got ", 1)[0]
                texts.append(text)
        except Exception:  # noqa: BLE001 - a value some check could not even inspect
            continue
    text = max(texts, key=len) if texts else "any value of its type"
    if _default(name) is None and "null" not in text:  # Optional fields take null too
        text += " (or null)"
    return text


def _get(cfg: Config, name: str):
    if name == "preset":
        return cfg.preset
    section, fname = name.split(".")
    return getattr(getattr(cfg, section), fname)


def _default(name: str):
    if name == "preset":
        return Config.__dataclass_fields__["preset"].default
    section, fname = name.split(".")
    f = SECTIONS[section].__dataclass_fields__[fname]
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def describe(cfg: Config) -> list[dict]:
    """[{"field", "value", "default", "allowed", "help"}] for every field of cfg."""
    return [{"field": n, "value": _get(cfg, n), "default": _default(n),
             "allowed": allowed(cfg, n), "help": FIELD_HELP.get(n, "")} for n in field_names()]


def _show(v) -> str:
    import json
    if v is None:
        return "null"
    if isinstance(v, str):
        return v
    if isinstance(v, tuple):
        return json.dumps(v)
    return json.dumps(v) if isinstance(v, bool) else repr(v)


def format_fields(rows: list[dict]) -> str:
    """Text for `topicdyn config`: per field 'SECTION.FIELD = value  help' and an indented
    line with the default and the allowed values; changed values are marked with *."""
    out, section = [], None
    for r in rows:
        s = r["field"].split(".")[0] if "." in r["field"] else ""
        if s != section:
            section = s
            out.append(f"[{s or 'label'}]")
        mark = " *" if r["value"] != r["default"] else ""
        out.append(f"{r['field']} = {_show(r['value'])}{mark}    # {r['help']}")
        out.append(f"    default {_show(r['default'])}; allowed: {r['allowed']}")
    out.append("(* differs from the default; set a field with SECTION.FIELD=VALUE)")
    return "\n".join(out)


def suggest(name: str) -> list[str]:
    """Fields a mistyped SECTION.FIELD (or a bare FIELD) may have meant, best first."""
    names = field_names()
    bare = name.split(".")[-1].replace("-", "_")
    exact = [n for n in names if n.split(".")[-1] == bare]
    if exact:
        return exact
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    by_field = {n.split(".")[-1]: n for n in names}
    close += [by_field[m] for m in difflib.get_close_matches(bare, list(by_field), n=3,
                                                             cutoff=0.75)]
    return list(dict.fromkeys(close))[:3]


def did_you_mean(name: str) -> str:
    """' (did you mean train.steps?)' or ''."""
    s = suggest(name)
    return f" (did you mean {' or '.join(s)}?)" if s else ""


def flag_hint(tokens: list[str]) -> str | None:
    """For `topicdyn train --steps 100 --lr=0.1`: 'config fields are overrides, not flags:
    write train.steps=100 optim.lr=0.1' when --flags name config fields; None otherwise."""
    names, parts = field_names(), []
    for i, tok in enumerate(tokens):
        if not tok.startswith("--") or len(tok) < 3:
            continue
        flag, eq, value = tok[2:].partition("=")
        if not eq:
            value = tokens[i + 1] if i + 1 < len(tokens) and not tokens[i + 1].startswith("-") \
                else "VALUE"
        key = flag.replace("-", "_")
        hits = [key] if key in names else [n for n in names if n.split(".")[-1] == key]
        if hits:
            parts.append(" or ".join(f"{h}={value}" for h in hits))
    return ("config fields are overrides, not flags: write " + " ".join(parts)) if parts \
        else None
