"""Metric functions against cases computed by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest

from models.evaluation.ranking import PositiveRank, auc, average_ranks, bootstrap_interval, user_metrics


def test_auc_counts_ties_as_half():
    # pairs (pos, neg): (0.9,0.5)=1, (0.9,0.9)=0.5, (0.9,0.1)=1, (0.4,0.5)=0, (0.4,0.9)=0, (0.4,0.1)=1
    scores = [0.9, 0.4, 0.5, 0.9, 0.1]
    labels = [1, 1, 0, 0, 0]
    assert auc(scores, labels) == pytest.approx(3.5 / 6)


def test_auc_extremes_and_constant_scores():
    assert auc([3, 2, 1], [1, 0, 0]) == 1.0
    assert auc([1, 2, 3], [1, 0, 0]) == 0.0
    assert auc([7, 7, 7, 7], [1, 0, 1, 0]) == 0.5
    with pytest.raises(ValueError):
        auc([1, 2], [1, 1])


def test_average_ranks_share_ties():
    assert average_ranks(np.array([10, 20, 10, 30])).tolist() == [1.5, 3.0, 1.5, 4.0]


def test_hit_ndcg_mrr_without_ties():
    # two negatives above the positive: rank 3
    m = user_metrics(0.5, [0.9, 0.8, 0.1, 0.2], ks=(1, 3, 5))
    assert m["hr@1"] == 0 and m["hr@3"] == 1 and m["hr@5"] == 1
    assert m["ndcg@3"] == pytest.approx(1 / math.log2(4)) == pytest.approx(0.5)
    assert m["mrr@3"] == pytest.approx(1 / 3) and m["mrr@1"] == 0
    assert m["user_auc"] == pytest.approx(2 / 4)


def test_top_ranked_positive():
    m = user_metrics(1.0, [0.1] * 20)
    assert m["hr@3"] == m["ndcg@3"] == m["mrr@3"] == m["user_auc"] == 1.0


def test_ties_take_the_expectation_over_tie_breaks():
    # one negative above, two tied: rank uniform over {2, 3, 4}
    rank = PositiveRank.of(0.5, [0.7, 0.5, 0.5, 0.1])
    assert (rank.above, rank.tied) == (1, 2)
    assert rank.hit(3) == pytest.approx(2 / 3)
    assert rank.mrr(3) == pytest.approx((1 / 2 + 1 / 3) / 3)
    assert rank.ndcg(3) == pytest.approx((1 / math.log2(3) + 1 / math.log2(4)) / 3)
    assert rank.hit(10) == 1.0
    # a constant scorer over 21 candidates: HR@5 is 5/21 whatever the sort would do
    assert user_metrics(0.3, [0.3] * 20)["hr@5"] == pytest.approx(5 / 21)


def test_bootstrap_interval_brackets_the_mean():
    values = np.random.default_rng(1).normal(0.6, 0.1, size=400)
    low, high = bootstrap_interval(values, np.mean, samples=500)
    assert low < values.mean() < high
    assert high - low == pytest.approx(2 * 1.96 * values.std() / math.sqrt(400), rel=0.25)


def test_average_ranks_match_the_mean_position_of_each_tie_group():
    rng = np.random.default_rng(0)
    for _ in range(200):
        values = rng.integers(0, 5, rng.integers(1, 30)).astype(float)
        brute = [((values < v).sum() + 1 + (values <= v).sum()) / 2 for v in values]
        assert np.allclose(average_ranks(values), brute)
    assert average_ranks([]).size == 0
