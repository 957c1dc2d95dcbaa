"""The predicted trajectory of a run (reduced block-symmetric dynamics, topicdyn.theory.reduced)
computed for its config, cached with the theory, and stored beside the run as predicted.json.

`predict(cfg)` trains the reduced model (regimes V, E, A, F) with the run's optimiser, schedule and
learning rate from the projection of seed train.seed's initial parameters onto the subspace, on
a fixed Monte Carlo sample of PREDICT_DOCS documents (key: seed PREDICT_SEED), and returns the
series at the run's checkpoint steps with the standard error of the final loss, and for Adam
in V and E also the finite-batch mean-field series ("batch": the lag that gradient noise in
Adam's second moment causes, theory/reduced/noise.py). Any other
config gets {"note": why}. `predicted_lags` tabulates the predicted two-stage lag over init
scales and learning rates. `for_run(run_dir)` reads
predicted.json or computes and writes it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from topicdyn.config import Config
from topicdyn.theory.cache import memoized

PREDICT_DOCS = 1000  # documents of the sample; the loss s.e. is stored (~0.01-0.02 nats)
PREDICT_SEED = 271828  # the sample's key: independent of every run's data stream
FILE = "predicted.json"


@memoized(("data", "mask", "model", "optim", "train"), maxsize=8)
def _predict(cfg: Config, init_stds: tuple, n_docs: int, seed: int) -> dict:
    # init_stds: the initial scales enter theta_0 (the cache key drops model.init_*)
    from topicdyn.checkpoint import checkpoint_steps
    from topicdyn.theory.population import population
    from topicdyn.theory.reduced import reduced_model, reduced_trajectory
    from topicdyn.theory.reduced.series import predicted_series

    from topicdyn.theory.reduced.noise import meanfield_supported

    sample = population(cfg, "monte_carlo", n_docs, seed)
    rm = reduced_model(cfg)
    tr = reduced_trajectory(cfg, sample)
    steps = checkpoint_steps(cfg.train)
    out = predicted_series(rm, tr, steps)
    why = meanfield_supported(cfg, rm)
    if why is None:  # the finite-batch lag of Adam (mean-field approximation, noise.py)
        B = cfg.data.batch_size
        tb = reduced_trajectory(cfg, sample, batch=B)
        out["batch"] = {**predicted_series(rm, tb, steps), "seconds": tb.seconds,
                        "label": f"batch {B}, Adam on the gradient moments (mean-field "
                                 f"approximation)"}
    else:
        out["batch_note"] = why
    out.update({"regime": rm.regime, "loss_se": tr.loss_se, "seconds": tr.seconds,
                "sample": tr.sample + f" ({n_docs} documents, seed {seed})",
                "theta_names": list(tr.names),
                "theta_final": {n: [float(x) for x in tr.theta[n][-1]] for n in rm.trained},
                "init": f"projection of seed {cfg.train.seed}'s initial parameters onto the "
                        f"block-symmetric subspace",
                "optimizer": f"{cfg.optim.name}, lr {cfg.optim.lr}, schedule "
                             f"{cfg.optim.schedule} (training.make_optimizer)"})
    return out


def predict(cfg: Config, n_docs: int = PREDICT_DOCS, seed: int = PREDICT_SEED) -> dict:
    """The predicted series of cfg (see module doc), or {"note": why not}."""
    from topicdyn.theory.common import is_disjoint_uniform
    from topicdyn.theory.reduced.model import regime_of

    if cfg.data.source != "lda" or not is_disjoint_uniform(cfg):
        return {"note": "reduced dynamics need the LDA generator with disjoint uniform topics"}
    if regime_of(cfg) is None:
        return {"note": "no exact reduction for this model (regimes V, E, A, F with one "
                        "layer, one head, no positions/residual/LayerNorm, d_model = n_vocab, "
                        "no grad_clip: docs/REDUCTION.md)"}
    m = cfg.model
    stds = tuple(m.init_std(g) for g in ("embedding", "query", "key", "value", "decoder"))
    from topicdyn.theory.cache import code_version

    return {**_predict(cfg, stds, n_docs, seed), "code": code_version()}


def enabled() -> bool:
    """False when TOPICDYN_PREDICT=0 (an opt-out, e.g. for sweep equality tests)."""
    return os.environ.get("TOPICDYN_PREDICT", "1") != "0"


def for_run(run_dir: str | Path, cfg: Config | None = None) -> dict:
    """predicted.json of a run directory, computed and written when missing or computed by
    other code (its "code": topicdyn's source digest, theory.cache.code_version)."""
    from topicdyn.theory.cache import code_version

    from topicdyn.config import load_config
    from topicdyn.jsonl import write_atomic

    if not enabled():
        return {"note": "predictions turned off (TOPICDYN_PREDICT=0)"}
    path = Path(run_dir) / FILE
    if path.exists():
        try:
            out = json.loads(path.read_text())
            if out.get("code") == code_version():
                return out
        except ValueError:
            pass
    out = predict(cfg or load_config(run_dir))
    write_atomic(path, json.dumps(out, indent=1) + "\n")
    return out


def predicted_lags(cfg: Config, init_scales, lrs) -> list[dict]:
    """The predicted t50s and lag t50(QK) - t50(W^V) for every (init scale, lr) of a regime-F
    config (rows: init_scale, lr, t50 {matrix: step}, lag, seconds)."""
    import dataclasses

    rows = []
    for s in init_scales:
        for lr in lrs:
            c = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, init_scale=s),
                                    optim=dataclasses.replace(cfg.optim, lr=lr))
            p = predict(c)
            rows.append({"init_scale": s, "lr": lr, "t50": p.get("t50"), "lag": p.get("lag"),
                         "seconds": p.get("seconds"), "note": p.get("note")})
    return rows


class Prefetch:
    """predict(cfg) computed in a background thread while the run trains, on the last device
    (beside training, as the prober); the verdicts' for_run at the end then finds it in the
    theory's memo and writes predicted.json. The thread writes nothing into the run directory
    (a new run's directory is checked for emptiness after this starts). A failure here is
    dropped, since for_run computes it again and reports it; join() waits for the thread."""

    def __init__(self, cfg: Config):
        import threading

        self._thread = threading.Thread(target=self._work, args=(cfg,),
                                        name="topicdyn-predict", daemon=True)
        self._thread.start()

    @staticmethod
    def _work(cfg: Config) -> None:
        import jax

        if not enabled():
            return
        try:
            with jax.default_device(jax.devices()[-1]):
                predict(cfg)
        except Exception:  # noqa: BLE001  (recomputed, and reported, by the verdicts)
            pass

    def alive(self) -> bool:
        return self._thread.is_alive()

    def join(self) -> None:
        self._thread.join()
