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
