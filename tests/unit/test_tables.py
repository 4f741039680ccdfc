"""The partitioned table: every access names its partition, and forgetting it fails loudly."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from streams.events import _current_event
from streams.tables import PartitionedTable


class Event:
    message: SimpleNamespace


def current_partition():
    ref = _current_event.get(None)
    event = ref() if ref is not None else None
    return None if event is None else (event.message.topic, event.message.partition)


def test_each_view_sets_its_partition_before_every_access():
    table = PartitionedTable({"u1": {"n": 1}}, "interactions")
    at_two = table.at(2)
    table.at(5)["u2"] = {"n": 2}
    assert current_partition() == ("interactions", 5)
    assert at_two.get("u1") == {"n": 1} and current_partition() == ("interactions", 2)  # set again on each access
    event = Event()  # Faust keeps a weak reference to the current event
    event.message = SimpleNamespace(topic="summaries", partition=3)
    assert "u2" in table.of(event) and current_partition() == ("summaries", 3)
    assert table.anywhere()["u2"] == {"n": 2} and current_partition() is None


def test_an_access_without_a_partition_is_an_error_not_an_empty_answer():
    table = PartitionedTable({"u1": {"n": 1}}, "interactions")
    with pytest.raises(AttributeError):
        table.get("u1")
    with pytest.raises(TypeError):
        table["u1"]
    with pytest.raises(TypeError, match="must name its partition"):
        table.anywhere()["u1"] = {}
    with pytest.raises(TypeError, match="must name its partition"):
        del table.anywhere()["u1"]
    assert dict(table.items()) == {"u1": {"n": 1}}  # a scan of every partition held
