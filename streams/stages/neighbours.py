"""Item-keyed aggregates: co-occurrence neighbours, counts and trending, right with any number of workers.

The interactions stage (user-keyed) sends each batch's interactions, with the items each pairs
with, to the item-pairs partitions of the items they change; this stage owns the item partitions
of that topic, derives the increments of its items and folds them into the item-neighbours
GlobalTable, which every worker reads whole. Redelivered increments
are skipped by their source partition and offset (``models.candidates.cooccurrence.apply_entries``).
"""
from __future__ import annotations

import logging

from models.candidates.cooccurrence import decode_message, fold_entries, fold_message, key_partition, prune
from streams.events import in_partition_of
from streams.services import Services

log = logging.getLogger(__name__)

# records this stage wrote, kept to be read back at their next batch (about 10 KB each at M = 200);
# past this many the memory is dropped and records are read from the table again
RECORDS_KEPT = 50_000

# what a malformed item-pairs message raises in the fold (ArithmeticError: a number too large for
# a float or an index): dead-lettered, never the agent's crash
MALFORMED = (ValueError, KeyError, TypeError, AttributeError, IndexError, ArithmeticError)


class NeighboursStage:
    def __init__(self, services: Services):
        self.services = services
        self.config = services.settings.cooccurrence_config()
        # item -> the record this stage last stored: the next batch that changes the item reads it
        # here, not from the table (a RocksDB read and a JSON decode of some 10 KB per record and
        # batch), with the ids the compiled fold interned (``models.candidates.cooccurrence.writable``). Only
        # this stage writes the records of its item partitions, so what it stored is what the
        # table holds until a rebalance, which calls ``forget``.
        self.written: dict[str, dict] = {}
        self.generation = 0  # counts ``forget``: a batch that began before one keeps nothing

    def forget(self) -> None:
        """After a revocation: another worker may change these records now."""
        self.written = {}
        self.generation += 1

    def stored(self, item_id: str) -> dict | None:
        record = self.written.get(item_id)
        return record if record is not None else self.services.neighbours.get(item_id)

    async def process(self, events) -> None:
        generation = self.generation
        folding: dict[str, list] = {}  # item -> [record being changed, applied, skipped] (``fold_entries``)
        # the partition each record is written to (its store and changelog): its message's
        by_partition: dict[int, object] = {}  # item partition -> its last event
        by_item: dict[str, object] = {}  # item -> the last of its one-item messages
        folded: list[tuple] = []  # (event, payload) folded so far
        for event in events:
            message = event.message
            try:
                payload = decode_message(message.value)
                self.fold(folding, event, payload, by_partition, by_item)
            except MALFORMED as exc:
                await self.services.publisher.dead_letter(message, "MalformedPairs", f"{type(exc).__name__}: {exc}")
                # the bad message may have changed some records before failing: fold again without it
                folding.clear()
                for good_event, good_payload in folded:
                    self.fold(folding, good_event, good_payload, by_partition, by_item)
                continue
            folded.append((event, payload))
        partitions = self.services.settings.item_partitions
        applied = skipped = written = 0
        for item_id, (record, new, redelivered) in folding.items():
            applied, skipped = applied + new, skipped + redelivered
            if new:
                written += 1
                in_partition_of(by_item.get(item_id) or by_partition[key_partition(item_id, partitions)])
                record = prune(record, self.config)
                self.services.neighbours[item_id] = record
                if generation == self.generation:
                    if len(self.written) >= RECORDS_KEPT:
                        self.written = {}
                    self.written[item_id] = record
                self.services.item_stats.apply(item_id, record)
        self.services.metrics.inc("pair_entries_applied_total", applied)
        self.services.metrics.inc("pair_batches_total")
        self.services.metrics.inc("neighbour_records_written_total", written)
        if skipped:
            self.services.metrics.inc("pair_entries_skipped_total", skipped)
        self.services.metrics.gauge("items_with_neighbours", len(self.services.item_stats.counts))

    def fold(self, folding: dict, event, payload: dict, by_partition: dict, by_item: dict) -> None:
        """One item-pairs message into ``folding``: an item partition's interactions
        (``fold_message``: ``{"pairs"}``, or the ``{"interactions"}`` of earlier workers), or one
        item's increment objects (``{"item_id", "entries"}``, as workers before the
        interactions layout sent them, so a topic written by one still folds after an upgrade).
        Raises on a malformed message, possibly after changing some records (the caller folds
        the batch again without it: checking every pair first cost a tenth of the fold)."""
        get = self.stored
        if "pairs" in payload or "interactions" in payload:
            fold_message(folding, get, payload, self.config)
            by_partition[event.message.partition] = event
        else:
            entries, item_id = payload["entries"], str(payload["item_id"])
            fold_entries(folding, get, item_id, entries, self.config)
            by_item[item_id] = event
