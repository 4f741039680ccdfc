"""Content similarity (cosine top-k over item-text embeddings from a recency-weighted user vector)
and count rankings, the candidate stage's numpy parts.

Pure numpy over an in-memory matrix of L2-normalised item embeddings; the stream keeps it in
step with the item-profile table.
"""
from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass
from typing import Container, Iterable, Sequence

import numpy as np


@dataclass(frozen=True)
class Scored:
    item_id: str
    score: float


class CatalogIndex:
    """Item id -> row of a growable float32 matrix; deletions free rows for reuse.

    One writer (the event loop) and any number of readers in other threads (the candidate stage)
    share it without a lock: the writer publishes in an order that leaves every reader a
    consistent view (the matrix grown and the row's vector written before the row's id appears,
    the id map updated last), and a reader takes the id list's length, then the matrix, then a
    copy of the ids, and ranks only those. A reader may still return an item removed a moment
    after its copy, as if it had asked a moment earlier.
    """

    def __init__(self, dim: int, capacity: int = 1024):
        self.dim = dim
        self._matrix = np.zeros((capacity, dim), dtype=np.float32)
        self._row: dict[str, int] = {}
        self._ids: list[str | None] = []
        self._free: list[int] = []

    def __len__(self) -> int:
        return len(self._row)

    def __contains__(self, item_id: str) -> bool:
        return item_id in self._row

    def ids(self) -> Container[str]:
        """The ids indexed, live (a view: membership tests at dict speed, nothing copied)."""
        return self._row.keys()

    def upsert(self, item_id: str, vector: Sequence[float]) -> None:
        vector = np.asarray(vector, dtype=np.float32)
        row = self._row.get(item_id)
        if row is not None:
            self._matrix[row] = vector
            return
        row = self._free.pop() if self._free else len(self._ids)
        if row >= len(self._matrix):
            grown = np.zeros((len(self._matrix) * 2, self.dim), dtype=np.float32)
            grown[: len(self._matrix)] = self._matrix
            self._matrix = grown  # before any id of a row past the old matrix is published
        self._matrix[row] = vector
        if row == len(self._ids):
            self._ids.append(item_id)
        else:
            self._ids[row] = item_id
        self._row[item_id] = row

    def remove(self, item_id: str) -> None:
        row = self._row.pop(item_id, None)
        if row is not None:
            self._ids[row] = None
            self._matrix[row] = 0.0
            self._free.append(row)

    def vector(self, item_id: str) -> np.ndarray | None:
        row = self._row.get(item_id)
        return None if row is None else self._matrix[row]

    def top_k(self, query: np.ndarray, k: int, exclude: Iterable[str] = ()) -> list[Scored]:
        n = len(self._ids)  # first the length, then the matrix: it has at least n rows
        matrix = self._matrix
        if n == 0 or not self._row:
            return []
        ids = self._ids[:n]  # the ids ranked below, whatever the writer does meanwhile
        scores = matrix[:n] @ query.astype(np.float32)
        excluded = exclude if isinstance(exclude, (set, frozenset)) else set(exclude)
        invalid = [r for r, i in enumerate(ids) if i is None or i in excluded]
        if invalid:
            scores[invalid] = -np.inf
        k = min(k, int(np.isfinite(scores).sum()))
        if k <= 0:
            return []
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [Scored(ids[r], float(scores[r])) for r in top]


def recency_weights(n: int, half_life: float) -> np.ndarray:
    """Weights for n items ordered oldest to newest: the newest weighs 1, halving every half_life items."""
    ages = np.arange(n - 1, -1, -1, dtype=np.float32)
    return np.power(0.5, ages / max(half_life, 1e-6))


def user_vector(index: CatalogIndex, recent_items: Sequence[str], half_life: float) -> np.ndarray | None:
    """Recency-weighted mean of the known items' embeddings, normalised; None if none is known."""
    known = [(pos, index.vector(i)) for pos, i in enumerate(recent_items)]
    known = [(pos, v) for pos, v in known if v is not None]
    if not known:
        return None
    weights = recency_weights(len(recent_items), half_life)[[pos for pos, _ in known]]
    vec = (weights[:, None] * np.stack([v for _, v in known])).sum(0)
    norm = float(np.linalg.norm(vec))
    return vec / norm if norm > 0 else None


class Popularity:
    """Interaction counts per item and a ranking of them.

    With ``auto_rank`` (offline use) a change re-sorts at the next ``top_k``. A stream turns it off
    and calls ``rank`` from a thread on a timer: a sort of 10^6 counts must not run on its loop.
    """

    def __init__(self, auto_rank: bool = True, keep: int = 20_000):
        self.counts: Counter[str] = Counter()
        self.auto_rank, self.keep = auto_rank, keep
        self._ranked: list[tuple[str, int]] | None = None
        self._ranked_total = 1
        self._dirty = False
        self._lock = threading.Lock()

    def add(self, item_id: str, n: int = 1) -> None:
        with self._lock:
            self.counts[item_id] += n
            self._dirty = True

    def set(self, item_id: str, value: float) -> None:
        with self._lock:
            self.counts[item_id] = value
            self._dirty = True

    def remove(self, item_id: str) -> None:
        with self._lock:
            self._dirty = self.counts.pop(item_id, None) is not None or self._dirty

    def rank(self) -> None:
        """Rank the ``keep`` most popular items (ties by id): lists never reach further down, and a
        partial selection in numpy (which releases the GIL) keeps a 10^6-item ranking off the loop."""
        with self._lock:
            ids, self._dirty = list(self.counts), False
            values = np.fromiter(self.counts.values(), dtype=np.float64, count=len(ids))
        if len(ids) > self.keep:
            top = np.argpartition(-values, self.keep - 1)[:self.keep]
            counts = [(ids[i], float(values[i])) for i in top.tolist()]
        else:
            counts = list(zip(ids, values.tolist()))
        self._ranked = sorted(counts, key=lambda kv: (-kv[1], kv[0]))
        self._ranked_total = max(float(values.sum()), 1.0)

    def top_k(self, k: int, exclude: Iterable[str] = (), allowed: CatalogIndex | None = None) -> list[Scored]:
        if self._ranked is None or (self.auto_rank and self._dirty):
            self.rank()
        excluded = set(exclude)
        total = self._ranked_total
        out = []
        for item_id, count in self._ranked:
            if item_id in excluded or (allowed is not None and item_id not in allowed):
                continue
            out.append(Scored(item_id, count / total))
            if len(out) == k:
                break
        return out
