import json

import pytest

import schemas
from streams.events import Trigger, dead_letter_record
from streams.services import DueLists

GOOD = {"user_id": "u1", "item_id": "i1", "type": "click", "event_time": "2026-03-01T10:00:00Z"}


def raw(event) -> bytes:
    return json.dumps(event).encode()


def test_valid_interaction_round_trips():
    assert schemas.parse("interaction", raw(GOOD)) == GOOD


@pytest.mark.parametrize("value, kind, fragment", [
    (b'{"user_id":', "MalformedJSON", "line 1"),
    (b"\xff\xfe{}", "NotUTF8", "UTF-8"),
    (raw({**GOOD, "user_id": 5}), "SchemaError", "user_id"),
    (raw({k: v for k, v in GOOD.items() if k != "item_id"}), "SchemaError", "item_id"),
    (raw({**GOOD, "event_time": "2026-03-01T10:00:00"}), "SchemaError", "event_time"),  # no zone
    (raw({**GOOD, "event_time": "tomorrow"}), "SchemaError", "event_time"),
    (raw([GOOD]), "SchemaError", "object"),
    (None, "EmptyValue", "no value"),
    (raw({**GOOD, "pad": "x" * 1_000_001}), "TooLarge", "limit"),
])
def test_invalid_interactions_name_the_reason(value, kind, fragment):
    with pytest.raises(schemas.InvalidEvent) as info:
        schemas.parse("interaction", value)
    assert info.value.kind == kind
    assert fragment in str(info.value)


def test_item_needs_title_unless_deleted():
    with pytest.raises(schemas.InvalidEvent, match="title"):
        schemas.parse("item", raw({"item_id": "a", "event_time": "2026-03-01T10:00:00Z"}))
    deleted = {"item_id": "a", "op": "delete", "event_time": "2026-03-01T10:00:00Z"}
    assert schemas.parse("item", raw(deleted)) == deleted


class FakeMessage:
    topic, partition, offset = "interactions", 2, 41
    key = b"u1"
    value = b"\xff not json"


def test_dead_letter_record_matches_its_schema_and_keeps_the_bytes():
    import base64

    record = dead_letter_record(FakeMessage, "NotUTF8", "bad bytes")
    schemas.validate("dead_letter", record)
    assert base64.b64decode(record["original"]) == FakeMessage.value
    assert record["source"] == {"topic": "interactions", "partition": 2, "offset": 41}
    assert record["error"] == {"class": "NotUTF8", "message": "bad bytes"}


def test_due_lists_coalesce_a_burst_per_user():
    d = DueLists()
    d.schedule("u1", 10.0)
    d.schedule("u1", 10.0)
    d.schedule("u2", 0.0)
    assert d.pop_due() == ["u2"]
    assert d.pop_due(now=float("inf")) == ["u1"]
    assert len(d) == 0


def test_a_trigger_survives_the_round_trip_through_state():
    t = Trigger("interactions", 3, 41, "2026-03-01T10:00:00Z", "interaction", 1000.5)
    assert Trigger.from_state(t.to_state()) == t
    assert t.to_dict() == {"topic": "interactions", "partition": 3, "offset": 41,
                           "event_time": "2026-03-01T10:00:00Z", "kind": "interaction"}


def test_a_user_busier_than_the_debounce_still_gets_a_list_within_the_maximum_wait():
    """An event every 0.2 s against a 0.5 s debounce: each pushed the deadline back, so the list
    was never due while the user stayed active."""
    d = DueLists(max_wait=2.0)
    emitted_at = []
    for step in range(100):  # 20 s of activity
        now = step * 0.2
        d.schedule("busy", 0.5, now=now)
        if d.pop_due(now=now):
            emitted_at.append(now)
    assert emitted_at and emitted_at[0] <= 2.0
    gaps = [b - a for a, b in zip(emitted_at, emitted_at[1:])]
    assert len(emitted_at) >= 8 and max(gaps) <= 2.0 + 2 * 0.2 + 1e-9  # every max_wait (+ the event spacing)


def test_due_lists_pop_in_deadline_order_a_bounded_number_per_turn():
    d = DueLists(per_turn=3)
    for i in range(10):
        d.schedule(f"u{i}", 1.0 + (9 - i) * 0.1, now=0.0)  # u9 is due first
    d.schedule("u0", 5.0, now=0.5)  # pushed back: its old heap entry is stale
    assert d.pop_due(now=3.0) == ["u9", "u8", "u7"]
    assert d.pop_due(now=3.0) == ["u6", "u5", "u4"]
    assert d.pop_due(now=3.0) == ["u3", "u2", "u1"]
    assert d.pop_due(now=3.0) == [] and len(d) == 1
    assert d.pop_due(now=6.0) == ["u0"] and len(d) == 0


def test_the_schedule_heap_stays_bounded_under_repeated_rescheduling():
    d = DueLists()
    for step in range(10_000):
        d.schedule(f"u{step % 5}", 1.0, now=step * 0.001)
    assert len(d) == 5 and len(d._heap) <= 2 * 5 + 64 + 1


def test_the_worker_schedule_takes_its_limits_from_the_settings():
    from streams.metrics import Metrics
    from streams.services import Services
    from streams.settings import Settings

    services = Services(Settings(debounce_max_seconds=3.5, emit_max_lists=7), {}, {}, None, Metrics(), None)
    assert (services.due.max_wait, services.due.per_turn) == (3.5, 7)
