"""The theory package's content-keyed memo (topicdyn.theory.cache).

A hit must return exactly what a fresh computation returns, and a change to anything the function
reads (a data or masking field, an argument, an array's contents) must miss.
"""
import jax
import numpy as np
import pytest

from topicdyn.config import apply_overrides, preset
from topicdyn.masking import sample_batch
from topicdyn.theory import bayes_log_prob, bayes_loss, population, symmetric_optimum_V
from topicdyn.theory import cache

TINY = ["data.T=2", "data.v=2", "data.N_min=3", "data.N_max=3", "data.alpha=0.3",
        "mask.p_mask=0.4", "mask.random_source=content", "data.batch_size=8"]


@pytest.fixture(autouse=True)
def _fresh():
    cache.clear()
    yield
    cache.clear()


def _info(fn):
    return cache.cache_info()[f"{fn.__module__}.{fn.__qualname__}"]


def test_hit_equals_a_fresh_computation_and_content_changes_miss():
    cfg = preset("V", TINY)
    a = bayes_loss(cfg, n_batches=3)
    b = bayes_loss(apply_overrides(cfg, ["optim.lr=0.5", "train.seed=7", "model.init_scale=1"]),
                   n_batches=3)
    assert b is a and _info(bayes_loss) == {"hits": 1, "misses": 1, "size": 1,
                                           "disk_hits": 0}
    fresh = bayes_loss.uncached(cfg, n_batches=3)
    assert (a.mean, a.stderr, a.baselines) == (fresh.mean, fresh.stderr, fresh.baselines)

    for changed, kw in ((apply_overrides(cfg, ["mask.p_mask=0.3"]), {"n_batches": 3}),
                        (apply_overrides(cfg, ["data.alpha=0.5"]), {"n_batches": 3}),
                        (cfg, {"n_batches": 4}), (cfg, {"n_batches": 3, "seed": 1})):
        got = bayes_loss(changed, **kw)
        assert got is not a
        assert got.mean == bayes_loss.uncached(changed, **kw).mean
    assert _info(bayes_loss)["misses"] == 5


def test_batches_are_keyed_by_their_contents():
    cfg = preset("V", TINY)
    b0 = jax.device_get(sample_batch(jax.random.PRNGKey(0), cfg.data, cfg.mask))
    b1 = jax.device_get(sample_batch(jax.random.PRNGKey(1), cfg.data, cfg.mask))
    lp0 = bayes_log_prob(cfg, b0)
    assert bayes_log_prob(cfg, b0._replace(inputs=np.array(b0.inputs))) is lp0
    lp1 = bayes_log_prob(cfg, b1)
    np.testing.assert_array_equal(lp1, bayes_log_prob.uncached(cfg, b1))
    assert not np.array_equal(lp0, lp1)


def test_cached_results_are_read_only():
    cfg = preset("V", TINY)
    s = population(cfg, estimator="monte_carlo", n_docs=50)
    with pytest.raises(ValueError):
        s.key_counts[0, 0] = 99.0
    assert np.array_equal(s.key_counts, population.uncached(
        cfg, estimator="monte_carlo", n_docs=50).key_counts)


def test_model_key_ignores_init_scales_only():
    cfg = preset("V", TINY)
    o = symmetric_optimum_V(cfg, loss="ce", estimator="enumeration")
    assert symmetric_optimum_V(apply_overrides(cfg, ["model.init_scale=0.5"]), loss="ce",
                               estimator="enumeration") is o
    sq = symmetric_optimum_V(apply_overrides(cfg, ["model.loss=squared"]), estimator="enumeration")
    assert sq is not o and sq.loss == "squared"


def test_unknown_argument_types_are_not_cached():
    calls = []

    @cache.memoized(("data",))
    def f(cfg, x):
        calls.append(x)
        return len(calls)

    cfg = preset("V", TINY)
    odd = object()
    assert (f(cfg, odd), f(cfg, odd)) == (1, 2)
    assert (f(cfg, 3), f(cfg, 3)) == (3, 3)


def test_disk_tier_returns_what_a_fresh_computation_does(tmp_path, monkeypatch):
    monkeypatch.setenv("TOPICDYN_CACHE", str(tmp_path))
    cfg = preset("V", TINY)
    a = bayes_loss(cfg, n_batches=3)
    files = list(tmp_path.rglob("*.pkl"))
    assert len(files) == 1 and _info(bayes_loss)["disk_hits"] == 0
    cache.clear()  # a new process: the memory tier is empty
    b = bayes_loss(cfg, n_batches=3)
    assert _info(bayes_loss)["disk_hits"] == 1 and b is not a
    fresh = bayes_loss.uncached(cfg, n_batches=3)
    assert (b.mean, b.stderr, b.baselines, b.by_kind) == (fresh.mean, fresh.stderr,
                                                          fresh.baselines, fresh.by_kind)
    # another version of the code never reads this result
    cache.clear()
    monkeypatch.setattr(cache, "code_version", lambda: "another version")
    bayes_loss(cfg, n_batches=3)
    assert _info(bayes_loss)["disk_hits"] == 0 and len(list(tmp_path.rglob("*.pkl"))) == 2


def test_disk_tier_recomputes_a_damaged_file_and_never_runs_code(tmp_path, monkeypatch):
    import pickle

    monkeypatch.setenv("TOPICDYN_CACHE", str(tmp_path))
    cfg = preset("V", TINY)
    want = bayes_loss(cfg, n_batches=2).mean
    (f,) = tmp_path.rglob("*.pkl")
    for payload in (b"garbage", pickle.dumps(__import__("pathlib").Path("x"))):
        f.write_bytes(payload)
        cache.clear()
        assert bayes_loss(cfg, n_batches=2).mean == want
        assert _info(bayes_loss)["disk_hits"] == 0

    class Evil:
        def __reduce__(self):
            return (print, ("ran",))

    f.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(pickle.UnpicklingError, match="not allowed"):
        cache._SafeUnpickler(__import__("io").BytesIO(f.read_bytes())).load()
    cache.clear()
    assert bayes_loss(cfg, n_batches=2).mean == want  # and the file is replaced
    cache.clear()
    bayes_loss(cfg, n_batches=2)
    assert _info(bayes_loss)["disk_hits"] == 1
