"""Fuzzing the CLI boundary: random override sets over every config field, mixing valid and
invalid values. Each set either gives a Config or raises ConfigError whose message starts with
a field name ("section.field" or "preset"); never any other exception.

A seeded generator (not hypothesis: no extra dependency, and the same 600 sets on every run).
"""
from __future__ import annotations

import dataclasses
import json
import random
import re

import pytest

from topicdyn.config import Config, ConfigError, apply_overrides, preset
from topicdyn.config.sections import SECTIONS

FIELDS = [f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)]
GARBAGE = ["", " ", "[", "[1,", "]", "{", "{}", "[]", "[[]]", '[["x"]]', "nan", "inf", "-inf",
           "-1", "0", "1", "2", "0.5", "1e30", "-1e30", "1e-300", "2147483647", "2147483648",
           "99999999999999999999", "abc", "none", "null", "true", "false", "../x", "/tmp/x",
           "a/b", "é", "1,2", "[1,2]", "[0,10]", '[["value", 0.5]]', '[["query", 10]]',
           '[["value", 2.0]]', '[[0.5,0.5]]', "value", "embedding,value", "trained", "onehot",
           "identity", "uniform", "causal", "mlm", "learned", "sinusoidal", "reference",
           "attention", "embedding_only", "k_topics", "overlap", "zipf", "explicit", "fast",
           "generic", "squared", "sgd", "adamw", "cosine", "all", "content", "nope:x",
           "os:path", "topicdyn.models:VARIANTS"]
NAMED = re.compile(r"^(preset|[a-z]+\.[A-Za-z0-9_+]+): ")


def _text(x) -> str:
    if x is None:
        return "none"
    if isinstance(x, bool):
        return str(x).lower()
    if isinstance(x, tuple):
        return json.dumps(x)
    return str(x)


def _plausible(rng, field: str) -> str:
    """The field's default or a nearby value of the same type (often valid)."""
    sec, name = field.split(".")
    x = getattr(getattr(preset("F"), sec), name)
    if isinstance(x, bool):
        return rng.choice(["true", "false"])
    if isinstance(x, int):
        return str(rng.choice([x, x + 1, max(x - 1, 0), 2 * x]))
    if isinstance(x, float):
        return str(rng.choice([x, x / 2, min(1.0, 2 * x)]))
    return _text(x)


def _override_sets(n: int, seed: int = 0):
    rng = random.Random(seed)
    for _ in range(n):
        ov = []
        for _ in range(rng.choice([1, 1, 2, 3, 4])):
            if rng.random() < 0.1:
                ov.append(f"preset={rng.choice(GARBAGE + ['E', 'my-run_2'])}")
                continue
            f = rng.choice(FIELDS)
            ov.append(f"{f}={_plausible(rng, f) if rng.random() < 0.5 else rng.choice(GARBAGE)}")
        yield ov


@pytest.mark.parametrize("block", range(6))
def test_overrides_give_a_config_or_one_named_config_error(block):
    valid = invalid = 0
    for ov in _override_sets(100, seed=block):
        try:
            cfg = apply_overrides(preset("F"), ov)
        except ConfigError as e:
            msg = str(e)
            assert "\n" not in msg and NAMED.match(msg), (ov, msg)
            invalid += 1
        except Exception as e:  # noqa: BLE001
            pytest.fail(f"{ov}: {type(e).__name__}: {e}")
        else:
            assert isinstance(cfg, Config)
            assert Config.from_dict(cfg.to_dict()) == cfg  # what is accepted round-trips
            valid += 1
    assert valid > 20 and invalid > 20  # both kinds were exercised


@pytest.mark.parametrize("ov,field", [
    (["optim.lr="], "optim.lr"),
    (["train.ckpt_steps=[1,"], "train.ckpt_steps"),
    (["optim.group_lr={"], "optim.group_lr"),
    (["train.chunk=1000000000"], "train.chunk"),
    (["train.n_seeds=2147483648"], "train.n_seeds"),
    (["train.seed=2147483647", "train.n_seeds=2"], "train.n_seeds"),
    (["preset=../../x"], "preset"),
    (["preset=/abs/path"], "preset"),
    (["data.batch_size=100000000"], "data.batch_size"),
])
def test_reported_boundary_cases(ov, field):
    with pytest.raises(ConfigError) as e:
        apply_overrides(preset("F"), ov)
    assert str(e.value).startswith(field), str(e.value)
