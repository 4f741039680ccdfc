"""A partitioned table whose every read and write names its partition.

Faust picks a partitioned table's RocksDB store and changelog partition from a context variable,
the current event; a read under another partition's event, or under none left over from an
earlier access, finds nothing and raises nothing. Here the partition is an argument instead:
``users.of(event)``, ``users.at(partition)`` or ``users.anywhere()`` return a view whose each
access sets the context first. The table itself offers no ``get`` or ``[]``, so an access that
forgot its partition is an AttributeError or TypeError at once, not an empty answer.
"""
from __future__ import annotations

from typing import Callable, Iterator, MutableMapping

from streams.events import in_no_partition, in_partition, in_partition_of


class PartitionView:
    """The table's mapping operations, each under one partition context."""

    __slots__ = ("_table", "_enter", "_writable")

    def __init__(self, table: MutableMapping, enter: Callable[[], None], writable: bool = True):
        self._table, self._enter, self._writable = table, enter, writable

    def get(self, key, default=None):
        self._enter()
        return self._table.get(key, default)

    def __getitem__(self, key):
        self._enter()
        return self._table[key]

    def __setitem__(self, key, value) -> None:
        self._check_writable()
        self._enter()
        self._table[key] = value

    def __delitem__(self, key) -> None:
        self._check_writable()
        self._enter()
        del self._table[key]

    def _check_writable(self) -> None:
        if not self._writable:  # the changelog partition of the write would be Faust's guess
            raise TypeError("a write to a partitioned table must name its partition (of(event) or at(partition))")

    def __contains__(self, key) -> bool:
        self._enter()
        return key in self._table


class PartitionedTable:
    """A Faust ``Table`` (or, in tests, any mutable mapping) keyed by the partitions of ``topic``."""

    def __init__(self, table: MutableMapping, topic: str):
        self.table, self.topic = table, topic

    def of(self, event) -> PartitionView:
        """The partition of ``event`` (a Faust event, or anything with ``message.topic/partition``)."""
        return PartitionView(self.table, lambda: in_partition_of(event))

    def at(self, partition: int) -> PartitionView:
        """Partition ``partition`` of the table's topic, where no event is at hand (settling a list)."""
        return PartitionView(self.table, lambda: in_partition(self.topic, partition))

    def anywhere(self) -> PartitionView:
        """Every partition this worker holds: for a key whose partition is not known here (the
        emitter's owed users, the HTTP views). Slower than ``at``: each store is asked in turn.
        Reads only: a write must name the partition whose changelog records it."""
        return PartitionView(self.table, in_no_partition, writable=False)

    def items(self) -> Iterator:
        """A scan of every partition this worker holds (run it in a thread: ``streams.threads``)."""
        in_no_partition()
        return iter(self.table.items())

    @property
    def changelog_topic(self):
        return self.table.changelog_topic
