"""The catalog as the candidate stage reads it: the content-similarity index (kept item by item,
rebuilt in a thread) and every item's interaction count and trending rank."""
from __future__ import annotations

import asyncio
from typing import Callable, Container, Iterable

from models.candidates.retrieval import CatalogIndex, Popularity
from streams.events import decode_vector, key_text
from streams.kafka.continuity import is_checkpoint_key
from streams.metrics import Metrics
from streams.threads import read_concurrently


class Catalog:
    """The content-similarity index over the catalog, kept incrementally; full rebuilds run in a thread.

    The index follows the item-profile GlobalTable: this worker's own writes and every other
    worker's (through the table's changelog) are applied one item at a time, so the loop never
    scans the catalog.
    """

    def __init__(self, metrics: Metrics, pool=None):
        self.metrics = metrics
        self.index: CatalogIndex | None = None
        self.pool = pool  # the executor rebuilds run in (None: asyncio's default)
        # updates that arrive before the first build or while a rebuild runs, replayed on its result
        self._journal: list[tuple[str, object]] | None = []

    @property
    def ready(self) -> bool:
        return self.index is not None

    def __contains__(self, item_id: str) -> bool:
        return self.index is not None and item_id in self.index

    def known(self) -> Container[str]:
        """The ids in the index, for many membership tests in a row: each ``in`` on the catalog
        is two Python calls, and the interactions stage makes some twenty per interaction (its
        window filtered to catalog items). Live until the next rebuild swaps the index."""
        return self.index.ids() if self.index is not None else frozenset()

    def __len__(self) -> int:
        return 0 if self.index is None else len(self.index)

    # -- the index -----------------------------------------------------------------------------
    def upsert(self, item_id: str, vector) -> None:
        if self._journal is not None:
            self._journal.append((item_id, vector))
        if self.index is not None:
            self.index.upsert(item_id, vector)
            self.metrics.gauge("catalog_items", len(self.index))

    def remove(self, item_id: str) -> None:
        if self._journal is not None:
            self._journal.append((item_id, None))
        if self.index is not None:
            self.index.remove(item_id)
            self.metrics.gauge("catalog_items", len(self.index))

    def apply_profile(self, item_id: str, profile: dict | None) -> None:
        """One item-profile value as the table stores it (None: deleted)."""
        if profile and profile.get("embedding"):
            self.upsert(item_id, decode_vector(profile["embedding"]))
        elif profile is None:
            self.remove(item_id)

    @staticmethod
    def build(dim: int, profiles: Iterable[tuple[object, dict]]) -> CatalogIndex:
        """A whole index from (key, profile) pairs: the work of a rebuild, meant for a thread."""
        index = CatalogIndex(dim)
        for key, profile in profiles:
            if profile and profile.get("embedding"):
                index.upsert(key_text(key), decode_vector(profile["embedding"]))
        return index

    async def rebuild(self, dim: int, profiles: Callable[[], Iterable[tuple[object, dict]]]) -> None:
        """Rebuild in an executor thread and swap it in; updates made meanwhile are replayed on top."""
        if self._journal is None:
            self._journal = []
        journal = self._journal
        index = await asyncio.get_running_loop().run_in_executor(
            self.pool, lambda: self.build(dim, read_concurrently(lambda: list(profiles()))))
        for item_id, vector in journal:
            index.upsert(item_id, vector) if vector is not None else index.remove(item_id)
        self._journal = None
        self.index = index
        self.metrics.inc("index_rebuilds_total")
        self.metrics.gauge("catalog_items", len(index))


class ItemStats:
    """Every item's interaction count and trending rank, from the item-keyed aggregates
    (``streams.stages.neighbours``): global, whatever the number of workers, and kept item by
    item from this worker's writes and the table's changelog. Ranked in a thread on a timer."""

    def __init__(self, half_life: float):
        self.half_life = half_life
        self.counts: dict[str, int] = {}
        self.trending = Popularity(auto_rank=False)

    def apply(self, item_id: str, record: dict | None) -> None:
        """One entry of the item-neighbours table, from any path (a fold, the changelog, a
        restore scan); the table also holds the offset guard's checkpoints, which are not items."""
        from models.candidates.cooccurrence import trend_key

        if is_checkpoint_key(item_id):
            return
        if not record:
            self.counts.pop(item_id, None)
            self.trending.remove(item_id)
            return
        self.counts[item_id] = record["count"]
        key = trend_key(record, self.half_life)
        if key > float("-inf"):
            self.trending.set(item_id, key)
