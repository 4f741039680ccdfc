"""Item-keyed aggregates: co-occurrence neighbours, counts and trending, right with any number of workers.

The interactions stage (user-keyed) sends each batch's increments re-keyed by item to the
item-pairs topic; this stage owns the item partitions of that topic and folds the increments
into the item-neighbours GlobalTable, which every worker reads whole. Redelivered increments
are skipped by their source partition and offset (``models.cooccurrence.apply_entries``).
"""
from __future__ import annotations

import logging

import orjson

from models.cooccurrence import apply_entries
from streams.events import in_partition_of
from streams.services import Services

log = logging.getLogger("mmsr.worker")


class NeighboursStage:
    def __init__(self, services: Services):
        self.s = services
        self.config = services.settings.cooccurrence_config()

    async def process(self, events) -> None:
        by_item: dict[str, list] = {}  # item -> [its last event (for the partition), its entries]
        for event in events:
            try:
                payload = orjson.loads(event.message.value)
                item_id, entries = payload["item_id"], payload["entries"]
            except (ValueError, KeyError, TypeError) as exc:
                await self.s.publisher.dead_letter(event.message, "MalformedPairs", f"{type(exc).__name__}: {exc}")
                continue
            gathered = by_item.setdefault(item_id, [event, []])
            gathered[0] = event
            gathered[1].extend(entries)  # in place: a popular item is in most messages of a batch
        applied = skipped = 0
        for item_id, (event, entries) in by_item.items():
            in_partition_of(event)
            record, new = apply_entries(self.s.neighbours.get(item_id), entries, self.config)
            applied, skipped = applied + new, skipped + len(entries) - new
            if new:
                self.s.neighbours[item_id] = record
                self.s.item_stats.apply(item_id, record)
        self.s.metrics.inc("pair_entries_applied_total", applied)
        if skipped:
            self.s.metrics.inc("pair_entries_skipped_total", skipped)
        self.s.metrics.gauge("items_with_neighbours", len(self.s.item_stats.counts))
