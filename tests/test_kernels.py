"""Fail-closed kernels: every config field is declared by each kernel or loss-invariant; the new
variants fall back to the definition; model.impl=fast names the field that rules a kernel out."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import pytest

from topicdyn.config import Config, ConfigError, DataConfig, ModelConfig, preset
from topicdyn.models import kernels


@dataclass(frozen=True)
class NewModel(ModelConfig):
    rotary: bool = False  # a switch no kernel has heard of


@dataclass(frozen=True)
class NewConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: NewModel = field(default_factory=NewModel)
    preset: str = "custom"


@pytest.mark.parametrize("kernel", kernels.KERNELS, ids=lambda k: k.name)
def test_every_config_field_is_declared(kernel):
    """A field added to any section without a declaration fails here (and the kernel would
    refuse every config at run time, see below)."""
    assert kernels.undeclared(kernel, Config) == []


def test_a_new_field_is_caught():
    """A synthetic config with one extra model field: the walk finds it, and the kernel is ruled
    out for every value of it (fail closed), naming the field."""
    for k in kernels.KERNELS:
        assert kernels.undeclared(k, NewConfig) == ["model.rotary"]
        reason = k.why_not(NewConfig())
        assert reason is not None and "model.rotary" in reason


def test_walk_is_recursive_and_complete():
    names = kernels.config_fields(Config)
    want = ["preset"] + [f"{s}.{f.name}" for s in ("data", "mask", "model", "optim", "train")
                         for f in dataclasses.fields(type(getattr(Config(), s)))]
    assert sorted(names) == sorted(want)


@pytest.mark.parametrize("extra,field_name", [
    (["mask.objective=causal"], "mask.objective"),
    (["model.positional=learned"], "model.positional"),
    (["model.positional=sinusoidal"], "model.positional"),
    (["model.n_layers=2"], "model.n_layers"),
])
def test_new_switches_fall_back_and_fast_is_refused(extra, field_name):
    cfg = preset("F", extra)
    assert kernels.select(cfg) == "generic"
    rec = kernels.record(cfg)
    assert rec["train_loss"] == "generic" and field_name in rec["why_generic"]
    with pytest.raises(ConfigError, match=field_name.replace(".", r"\.")):
        preset("F", extra + ["model.impl=fast"])


def test_presets_keep_their_kernels():
    assert kernels.select(preset("F")) == "lean"
    assert kernels.select(preset("V")) == "lean"
    assert kernels.select(preset("F", ["model.residual=true"])) == "fast"
    assert kernels.select(preset("F", ["model.impl=generic"])) == "generic"
