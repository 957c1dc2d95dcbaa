"""The theory's stated Monte Carlo errors are honest: across independent seeds, the estimates
scatter as their standard errors say, and the default seed is not an outlier."""
from __future__ import annotations

import numpy as np
import pytest

from topicdyn.config import preset
from topicdyn.theory import bayes_loss, population, symmetric_optimum_V

SMALL = ["data.T=4", "data.v=5", "data.N_min=20", "data.N_max=30", "data.batch_size=20"]
SEEDS = range(8)
# s^2 / se^2 of 8 iid normal estimates is chi2(7) / 7: 99.8% of it lies in [0.12, 3.3]
LOW, HIGH = 0.1, 3.5


def _check(values, ses, what):
    x, se = np.asarray(values), float(np.mean(ses))
    assert np.all(np.asarray(ses) > 0), what
    ratio = x.var(ddof=1) / se ** 2
    assert LOW < ratio < HIGH, f"{what}: seed-to-seed variance / stated se^2 = {ratio:.3g}"
    # the default seed (0) against the mean of the others
    z = (x[0] - x[1:].mean()) / (se * np.sqrt(1 + 1 / (len(x) - 1)))
    assert abs(z) < 3.5, f"{what}: seed 0 is {z:.2f} s.e. from the other seeds"


@pytest.mark.parametrize("loss", ["ce", "squared"])
def test_uniform_optimum_plateau_error_is_honest(loss):
    cfg = preset("V", SMALL + [f"model.loss={loss}"])
    vals, ses, gaps, gap_ses = [], [], [], []
    for s in SEEDS:
        o = symmetric_optimum_V(cfg, loss=loss, sample=population(cfg, n_docs=1500, seed=s))
        vals.append(o.plateau)
        ses.append(o.plateau_se)
        gaps.append(o.gaps["same_minus_cross"])
        gap_ses.append(o.gap_se["same_minus_cross"])
    _check(vals, ses, f"plateau ({loss})")
    _check(gaps, gap_ses, f"value gap ({loss})")


def test_bayes_floor_errors_are_honest():
    cfg = preset("V", SMALL)
    q, qse, vis, vse = [], [], [], []
    for s in SEEDS:
        b = bayes_loss.uncached(cfg, n_batches=30, seed=12345 + 1000 * s)
        q.append(b.mean)
        qse.append(b.stderr)
        m, e = b.baselines["bayes_without_query_token"]
        vis.append(m)
        vse.append(e)
    _check(q, qse, "bayes/query")
    _check(vis, vse, "bayes/visible")
