"""Blending candidate sources by weighted reciprocal-rank fusion.

Each source ranks its own top N; an item's fused score is sum over sources of
w_s / (k0 + rank_s), rank 1-based. RRF needs no calibration between the sources' scores
(cosine co-occurrence, SASRec logits, EASE sums, embedding similarity and decayed counts live on
different scales) and an item proposed by several sources rises. Ties break by item id, so a list is a
pure function of its inputs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

SOURCES = ("cooccurrence", "sequential", "ease", "content", "trending")


@dataclass(frozen=True)
class Fused:
    item_id: str
    score: float
    sources: tuple[str, ...]  # every source whose top N held the item, in SOURCES order


def fuse(ranked: Mapping[str, Sequence[str]], weights: Mapping[str, float], k: int, rrf_k: float = 60.0,
         exclude: set[str] | frozenset = frozenset()) -> list[Fused]:
    """The top ``k`` of the weighted RRF of the sources' ranked item ids (``exclude`` left out)."""
    scores: dict[str, float] = {}
    proposed: dict[str, list[str]] = {}
    for source in SOURCES:
        weight = weights.get(source, 0.0)
        items = ranked.get(source) or ()
        if weight <= 0 or not items:
            continue
        for rank, item_id in enumerate(items, 1):
            if item_id in exclude:
                continue
            scores[item_id] = scores.get(item_id, 0.0) + weight / (rrf_k + rank)
            proposed.setdefault(item_id, []).append(source)
    order = sorted(scores, key=lambda i: (-scores[i], i))[:k]
    return [Fused(i, scores[i], tuple(proposed[i])) for i in order]
