"""Baselines scored on the same candidates as the LLM recommender: random and popularity. The third,
SASRec, is the stream's own sequential source (``models.candidates.sasrec``).
"""
from __future__ import annotations

from collections import Counter

import numpy as np


class RandomScorer:
    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)

    def score(self, user_id: str, history: list[str], candidates: list[str]) -> list[float]:
        return self.rng.random(len(candidates)).tolist()


class PopularityScorer:
    """Interactions per item in the training sequences (test items excluded)."""

    def __init__(self, sequences: dict[str, list[str]]):
        self.counts = Counter(item for seq in sequences.values() for item in seq)

    def score(self, user_id: str, history: list[str], candidates: list[str]) -> list[float]:
        return [float(self.counts.get(c, 0)) for c in candidates]
