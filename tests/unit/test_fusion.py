"""The fused score: a ridge logistic regression with user-bootstrap intervals, saved beside the adapter."""
from __future__ import annotations

import math

import numpy as np

from models.llm.fusion import FEATURES, FusedScorer, fit, llm_margin


def synthetic(n_users: int = 300, seed: int = 0):
    """Label depends on the first two features only (true weights 2 and -0.5 per unit: 2 and -1 per
    standard deviation)."""
    rng = np.random.default_rng(seed)
    rows = rng.normal(size=(n_users * 6, 4)) * np.array([1.0, 2.0, 0.5, 3.0]) + np.array([0, 5, 1, -2])
    logit = 2.0 * rows[:, 0] - 0.5 * (rows[:, 1] - 5) - 0.5
    labels = (rng.random(len(rows)) < 1 / (1 + np.exp(-logit))).astype(float)
    return rows, labels, np.repeat(np.arange(n_users), 6)


def test_fit_recovers_the_weights_and_says_which_features_carry_nothing():
    rows, labels, groups = synthetic()
    scorer = fit(rows, labels, groups, ridge=1e-6, bootstrap=100)
    per_unit = np.array(scorer.coef) / np.array(scorer.scale)  # back from per-standard-deviation weights
    assert abs(per_unit[0] - 2.0) < 0.35 and abs(per_unit[1] + 0.5) < 0.15, per_unit
    # signs and order of the standardised weights: feature 0 (2 per std) over feature 1 (-1 per std),
    # the noise features far below both
    w = np.abs(scorer.coef)
    assert scorer.coef[0] > 0 > scorer.coef[1] and w[0] > w[1] > 5 * max(w[2], w[3]), scorer.coef
    (lo0, hi0), (lo1, hi1), (lo2, hi2), (lo3, hi3) = scorer.ci95
    assert lo0 > 0 and hi1 < 0  # the real signals are distinguished from 0
    assert lo2 < 0 < hi2 and lo3 < 0 < hi3  # the noise features are not
    # the optimum: the gradient of the log-likelihood vanishes, and the mean prediction is calibrated
    p = 1 / (1 + np.exp(-scorer.logits(rows)))
    z = (rows - np.array(scorer.mean)) / np.array(scorer.scale)
    assert np.abs(z.T @ (labels - p)).max() < 1e-3 and abs(p.mean() - labels.mean()) < 1e-6


def test_save_load_round_trip_and_missing_values(tmp_path):
    rows, labels, groups = synthetic(50)
    scorer = fit(rows, labels, groups, bootstrap=20, info={"adapter_version": "v1"})
    scorer.save_pretrained(tmp_path)
    loaded = FusedScorer.from_pretrained(tmp_path)
    assert loaded == scorer and loaded.fitted_on["adapter_version"] == "v1"
    assert np.allclose(loaded.logits(rows), scorer.logits(rows))
    row = dict(zip(FEATURES, rows[0]))
    missing = {k: v for k, v in row.items() if k != "sequential"}
    expected = scorer.logits(np.array([[rows[0][0], scorer.mean[1], rows[0][2], rows[0][3]]]))
    assert np.allclose(scorer.score_rows([missing]), expected)
    assert set(scorer.report()) == set(FEATURES)
    assert FusedScorer.from_pretrained(tmp_path / "none") is None


def test_llm_margin_inverts_the_sigmoid():
    for margin in (-8.0, -0.3, 0.0, 2.5):
        assert abs(llm_margin(1 / (1 + math.exp(-margin))) - margin) < 1e-6
    assert math.isfinite(llm_margin(1.0)) and math.isfinite(llm_margin(0.0))
