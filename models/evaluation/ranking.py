"""Ranking metrics of the MLLM-MSR protocol: AUC over all pairs; HR, NDCG and MRR at k per user.

Ties are scored by their expectation under a random tie break (AUC counts a tied pair as half),
so a model that gives many candidates the same score (popularity) is neither helped nor hurt by
where a sort happens to put the positive.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ascending, ties sharing the mean of their positions."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return values
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    new_group = np.r_[True, sorted_values[1:] != sorted_values[:-1]]
    starts = np.flatnonzero(new_group)
    ends = np.r_[starts[1:], len(values)] - 1
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = ((starts + ends) / 2 + 1)[np.cumsum(new_group) - 1]
    return ranks


def auc(scores, labels) -> float:
    """P(score of a random positive > score of a random negative), ties counting one half."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC needs at least one positive and one negative")
    ranks = average_ranks(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@dataclass(frozen=True)
class PositiveRank:
    """Where the one positive lands among a user's candidates: ``above`` negatives score higher and
    ``tied`` score the same, so its rank is uniform over above+1 .. above+tied+1."""

    above: int
    tied: int

    @classmethod
    def of(cls, positive: float, negatives) -> "PositiveRank":
        negatives = np.asarray(negatives, dtype=np.float64)
        return cls(int((negatives > positive).sum()), int((negatives == positive).sum()))

    def _expect(self, value_at_rank, k: int) -> float:
        ranks = range(self.above + 1, self.above + self.tied + 2)
        return sum(value_at_rank(r) for r in ranks if r <= k) / (self.tied + 1)

    def hit(self, k: int) -> float:
        return self._expect(lambda r: 1.0, k)

    def ndcg(self, k: int) -> float:
        return self._expect(lambda r: 1.0 / math.log2(r + 1), k)

    def mrr(self, k: int) -> float:
        return self._expect(lambda r: 1.0 / r, k)


def user_metrics(positive: float, negatives, ks=(3, 5, 10)) -> dict[str, float]:
    """HR@k, NDCG@k, MRR@k and the user's own AUC for one (positive, negatives) list."""
    rank = PositiveRank.of(positive, negatives)
    out = {"user_auc": 1.0 - (rank.above + rank.tied / 2) / max(len(negatives), 1)}
    for k in ks:
        out[f"hr@{k}"], out[f"ndcg@{k}"], out[f"mrr@{k}"] = rank.hit(k), rank.ndcg(k), rank.mrr(k)
    return out


def bootstrap_interval(per_user: np.ndarray, statistic, samples: int = 1000, seed: int = 0,
                       *, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of ``statistic(rows)`` over users resampled with replacement."""
    rng = np.random.default_rng(seed)
    n = len(per_user)
    values = [statistic(per_user[rng.integers(0, n, n)]) for _ in range(samples)]
    low, high = np.quantile(values, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(low), float(high)
