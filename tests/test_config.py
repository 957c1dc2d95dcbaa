"""Config validation (each bad field is named), serialisation round trips, overrides, presets."""
from __future__ import annotations

import json

import pytest

from topicdyn.config import (PRESETS, Config, ConfigError, DataConfig, MaskConfig, ModelConfig,
                             OptimConfig, apply_overrides, load_config, preset)

# (overrides applied to the reference defaults, the field the error message must name)
INVALID = [
    (["data.T=0"], "data.T"),
    (["data.v=0"], "data.v"),
    (["data.alpha=0"], "data.alpha"),
    (["data.alpha=-0.5"], "data.alpha"),
    (["data.N_min=200"], "data.N_max"),  # N_min > N_max = 150
    (["data.N_min=20", "data.N_max=10"], "data.N_max"),
    (["data.k=11"], "data.k"),  # more topics per document than T
    (["data.overlap=10"], "data.overlap"),  # overlap must be < v
    (["data.topic_words=foo"], "data.topic_words"),
    (["data.prior=foo"], "data.prior"),
    (["mask.p_mask=1.5"], "mask.p_mask"),
    (["mask.p_mask=0"], "mask.p_mask"),
    (["mask.p_keep=-0.1"], "mask.p_keep"),
    (["mask.p_replace_random=1.2"], "mask.p_replace_random"),
    # proportions summing to 0.9 and 1.1: the message names the three fields together
    (["mask.p_replace_mask=0.7"], "mask.p_replace_mask+p_replace_random+p_keep"),
    (["mask.p_replace_mask=0.5", "mask.p_replace_random=0.3", "mask.p_keep=0.3"],
     "mask.p_replace_mask+p_replace_random+p_keep"),
    (["mask.random_source=foo"], "mask.random_source"),
    (["mask.key_set=foo"], "mask.key_set"),
    (["model.name=foo"], "model.name"),
    (["model.n_heads=3"], "model.n_heads"),  # 3 does not divide d_model = 104
    (["model.d_model=50", "model.n_heads=7"], "model.n_heads"),
    (["model.decoder=identity", "model.d_model=64"], "model.d_model"),
    (["model.loss=foo"], "model.loss"),
    (["model.init_scale=-1"], "model.init_scale"),
    (["optim.name=foo"], "optim.name"),
    (["optim.lr=0"], "optim.lr"),
    (["optim.weight_decay=0.1"], "optim.weight_decay"),  # adam has no decoupled decay
    (["optim.freeze=foo"], "optim.freeze"),
    (['optim.group_lr=[["foo", 0.5]]'], "optim.group_lr"),
    (["train.steps=0"], "train.steps"),
    (["train.ckpt_steps=[10,6000]"], "train.ckpt_steps"),  # beyond steps=5000
    # unknown section / field
    (["foo.T=1"], "foo.T"),
    (["data.foo=1"], "data.foo"),
    (["T=1"], "T"),
    # bad types
    (["data.T=abc"], "data.T"),
    (["data.T=2.5"], "data.T"),
    (["data.alpha=abc"], "data.alpha"),
    (["data.alpha=nan"], "data.alpha"),
    (["model.residual=maybe"], "model.residual"),
    (["optim.lr=[1,2]"], "optim.lr"),
]


@pytest.mark.parametrize("overrides,field", INVALID, ids=[" ".join(o) for o, _ in INVALID])
def test_invalid_value_rejected_naming_the_field(overrides, field):
    with pytest.raises(ConfigError) as e:
        apply_overrides(Config(), overrides)
    assert str(e.value).startswith(field + ":"), str(e.value)


@pytest.mark.parametrize("name,overrides", [("V", ["model.d_model=50"]),
                                            ("A", ["model.d_model=50"]),
                                            ("A", ["model.d_model=90", "model.embedding=trained",
                                                   "model.decoder=trained"])])
def test_width_too_small_for_fixed_matrices(name, overrides):
    # V, A: one-hot embedding and identity decoder need d >= 104; A's topic block needs d >= V=100
    with pytest.raises(ConfigError, match=r"^model\.d_model:"):
        preset(name, overrides)


def test_width_at_the_limits_is_accepted():
    assert preset("V", ["model.d_model=104"]).d_model == 104
    assert preset("A", ["model.d_model=100", "model.embedding=trained",
                        "model.decoder=trained"]).d_model == 100


def test_direct_construction_validates():
    with pytest.raises(ConfigError, match=r"^data\.T:"):
        DataConfig(T=0)
    with pytest.raises(ConfigError, match=r"^mask\.p_mask:"):
        MaskConfig(p_mask=1.5)
    with pytest.raises(ConfigError, match=r"^model\.n_heads:"):
        ModelConfig(n_heads=0)
    with pytest.raises(ConfigError, match=r"^optim\.name:"):
        OptimConfig(name="rmsprop")
    with pytest.raises(ConfigError, match=r"^data\.beta:"):
        DataConfig(T=2, topic_words="explicit", beta=((0.5, 0.5), (0.5, 0.6)))
    with pytest.raises(ConfigError, match=r"^data\.beta:"):
        DataConfig(T=2, beta=((0.5, 0.5), (0.5, 0.5)))  # beta only with explicit
    assert issubclass(ConfigError, ValueError)


def test_from_dict_rejects_unknown_names_and_bad_types():
    with pytest.raises(ConfigError, match=r"^data\.foo:"):
        Config.from_dict({"data": {"foo": 1}})
    with pytest.raises(ConfigError, match=r"^foo:"):
        Config.from_dict({"foo": {}})
    with pytest.raises(ConfigError, match=r"^data\.T:"):
        Config.from_dict({"data": {"T": "abc"}})
    with pytest.raises(ConfigError, match=r"^data\.T:"):
        Config.from_dict({"data": {"T": True}})


def test_non_mapping_section_error_names_the_section():
    with pytest.raises(ConfigError) as e:
        Config.from_dict({"data": [1, 2]})
    assert str(e.value).startswith("data:"), str(e.value)
    with pytest.raises(ConfigError) as e:
        Config.from_dict([1, 2])
    assert str(e.value).startswith("config:"), str(e.value)


# ---- serialisation --------------------------------------------------------------------------

def _rich_config() -> Config:
    return preset("A", [
        "data.T=3", "data.topic_words=explicit",
        "data.beta=[[0.5,0.5,0,0],[0,0.25,0.75,0],[0,0,0,1]]",
        "data.prior=k_topics", "data.k=2", "data.k_weights=equal", "data.start_end=false",
        "mask.p_mask=0.2", "mask.random_source=content", "mask.key_set=all",
        "model.n_heads=2", "model.residual=true", "model.init_query=0.3",
        "optim.name=adamw", "optim.weight_decay=0.01", "optim.grad_clip=1.5",
        'optim.group_lr=[["query",0.5],["key",2]]', "optim.freeze=query",
        'optim.unfreeze_at=[["query",100]]', "train.ckpt_steps=[1,10,100]", "train.seed=7",
    ])


def test_round_trip_to_json_from_dict_and_load_config(tmp_path):
    cfg = _rich_config()
    assert cfg.data.V == 4 and cfg.d_model == 8
    back = Config.from_dict(json.loads(cfg.to_json()))
    assert back == cfg
    assert hash(back) == hash(cfg)  # tuples came back as tuples
    assert back.data.beta == ((0.5, 0.5, 0.0, 0.0), (0.0, 0.25, 0.75, 0.0), (0.0, 0.0, 0.0, 1.0))
    assert back.optim.group_lr == (("query", 0.5), ("key", 2.0))
    (tmp_path / "config.json").write_text(cfg.to_json())
    assert load_config(tmp_path / "config.json") == cfg
    assert load_config(tmp_path) == cfg  # a run directory
    # the defaults too
    assert Config.from_dict(json.loads(Config().to_json())) == Config()
    assert Config.from_dict({}) == Config()


def test_load_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.json")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"data": {"T": 0}}))
    with pytest.raises(ConfigError, match=r"^data\.T:"):
        load_config(tmp_path)


# ---- overrides -------------------------------------------------------------------------------

def test_apply_overrides_parses_types():
    cfg = apply_overrides(Config(), [
        "data.T=5", "data.alpha=0.5", "data.zipf_s=2", "model.residual=true", "model.layernorm=1",
        "data.start_end=False", "optim.freeze=value", 'optim.group_lr=[["value",0.5]]',
        "train.ckpt_steps=1,2,3", "optim.grad_clip=0.5", "model.d_model=null",
        "model.init_key=0.1"])
    assert cfg.data.T == 5 and type(cfg.data.T) is int
    assert cfg.data.alpha == 0.5 and type(cfg.data.alpha) is float
    assert cfg.data.zipf_s == 2.0 and type(cfg.data.zipf_s) is float
    assert cfg.model.residual is True and cfg.model.layernorm is True
    assert cfg.data.start_end is False
    assert cfg.optim.freeze == ("value",)
    assert cfg.optim.group_lr == (("value", 0.5),)
    assert type(cfg.optim.group_lr[0][1]) is float
    assert cfg.train.ckpt_steps == (1, 2, 3)
    assert cfg.optim.grad_clip == 0.5
    assert cfg.model.d_model is None and cfg.d_model == cfg.data.n_vocab == 54
    assert cfg.model.init_std("key") == 0.1 and cfg.model.init_std("query") == 0.02
    # several groups, JSON lists, none, and dict-style overrides
    cfg2 = apply_overrides(cfg, ["optim.freeze=value,key", "train.ckpt_steps=[5, 6]",
                                 "optim.grad_clip=none", "model.residual=0"])
    assert cfg2.optim.freeze == ("value", "key")
    assert cfg2.train.ckpt_steps == (5, 6)
    assert cfg2.optim.grad_clip is None and cfg2.model.residual is False
    cfg3 = apply_overrides(Config(), {"data.T": 4, "optim.freeze": ["key"]})
    assert cfg3.data.T == 4 and cfg3.optim.freeze == ("key",)
    # overrides do not touch the input config (frozen) and other fields keep their values
    assert Config().data.T == 10
    assert cfg3.data.v == 10 and cfg3.optim.lr == 0.01


def test_override_needs_equals_sign():
    with pytest.raises(ConfigError, match="SECTION.FIELD=VALUE"):
        apply_overrides(Config(), ["data.T"])


# ---- presets --------------------------------------------------------------------------------

SWITCHES = {
    "E": dict(embedding="trained", attention="uniform", value="identity", decoder="identity"),
    "V": dict(embedding="onehot", attention="uniform", value="trained", decoder="identity"),
    "A": dict(embedding="onehot", attention="trained", value="topic_block", decoder="identity"),
    "F": dict(embedding="trained", attention="trained", value="trained", decoder="trained"),
}


@pytest.mark.parametrize("name", ["E", "V", "A", "F"])
def test_presets_have_the_documented_switches(name):
    assert name in PRESETS
    cfg = preset(name)
    assert cfg.preset == name
    for k, v in SWITCHES[name].items():
        assert getattr(cfg.model, k) == v, k
    # the reference defaults of P1's code (BRIEF §2)
    d = cfg.data
    assert (d.T, d.v, d.alpha, d.N_min, d.N_max, d.start_end, d.batch_size) == \
        (10, 10, 0.1, 100, 150, True, 40)
    assert d.V == 100 and d.n_vocab == 104 and cfg.d_model == 104
    assert (cfg.model.name, cfg.model.n_heads, cfg.model.residual, cfg.model.layernorm,
            cfg.model.loss) == ("attention", 1, False, False, "ce")
    m = cfg.mask
    assert (m.p_mask, m.p_replace_mask, m.p_replace_random, m.p_keep, m.key_set) == \
        (0.15, 0.8, 0.1, 0.1, "unselected")
    assert (cfg.optim.name, cfg.optim.lr, cfg.train.steps) == ("adam", 0.01, 5000)
    if name == "F":
        assert cfg.model.init_scale == 0.02
    # overrides apply on top of the preset and keep its name
    over = preset(name, ["data.T=5"])
    assert over.data.T == 5 and over.preset == name and over.model == preset(name).model


def test_unknown_preset():
    with pytest.raises(ConfigError, match=r"^preset:"):
        preset("Z")
