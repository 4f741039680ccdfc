"""Bad input goes to dead-letters with its reason; the worker keeps going and applies the rest."""
from __future__ import annotations

import base64
import json

import pytest

from streams.kafka.client import EventProducer, ItemProducer, read_all
from tests.conftest import wait_until
from tests.integration import helpers

pytestmark = pytest.mark.integration

BAD = [
    ("MalformedJSON", b"u1", b'{"user_id": "u1", "item_id": '),
    ("SchemaError", b"u1", json.dumps({"user_id": "u1", "item_id": 7, "type": "click",
                                        "event_time": helpers.now()}).encode()),  # wrong type
    ("SchemaError", b"u1", json.dumps({"user_id": "u1", "type": "click", "event_time": helpers.now()}).encode()),
    ("SchemaError", b"u1", json.dumps({"user_id": "u1", "item_id": "i1", "type": "click",
                                        "event_time": "yesterday"}).encode()),
    ("NotUTF8", b"u1", b'{"user_id": "u1", "item_id": "\xff\xfe"}'),
    ("TooLarge", b"u1", json.dumps({"user_id": "u1", "item_id": "i1", "type": "click", "event_time": helpers.now(),
                                     "pad": "x" * 1_200_000}).encode()),
    ("NoKey", None, json.dumps({"user_id": "u1", "item_id": "i2", "type": "click",
                                 "event_time": helpers.now()}).encode()),
    ("KeyMismatch", b"u2", json.dumps({"user_id": "u1", "item_id": "i2", "type": "click",
                                        "event_time": helpers.now()}).encode()),
    ("EmptyValue", b"u1", None),
    ("SchemaError", b"u1", b"[1, 2, 3]"),
]


def test_bad_events_are_dead_lettered_and_valid_ones_applied(topic_factory, worker_factory):
    env = topic_factory()
    worker = worker_factory(env).start()
    with ItemProducer(env.bootstrap_servers, env.topic_items) as items:
        for item in helpers.catalog(12):
            items.send(item)
        items.send_raw(b"bad-item", b'{"item_id": "bad-item"}')  # no title, no event_time
    wait_until(lambda: worker.metric("catalog_items") == 12, message="catalog embedded")

    producer = EventProducer(env.bootstrap_servers, env.topic_interactions, "interaction", "user_id")
    valid = []
    for n, (_, key, value) in enumerate(BAD):
        good = {"user_id": "u1", "item_id": f"i{n}", "type": "view", "event_time": helpers.now()}
        producer.send(good)  # a valid event around every bad one
        valid.append(good)
        producer.send_raw(key, value)
    unknown = {"user_id": "u1", "item_id": "not-in-catalog", "type": "view", "event_time": helpers.now()}
    producer.send(unknown)
    producer.flush()

    expected_dead = len(BAD) + 1  # + the bad item
    letters = wait_until(lambda: (lambda m: m if len(m) >= expected_dead else None)(
        helpers.decode(read_all(env.bootstrap_servers, env.topic_dead_letters, timeout=5, idle=1))),
        message="dead letters")
    assert len(letters) == expected_dead
    interaction_letters = [d for d in letters if d["source"]["topic"] == env.topic_interactions]
    assert sorted(d["error"]["class"] for d in interaction_letters) == sorted(kind for kind, _, _ in BAD)
    for letter in interaction_letters:
        original = None if letter["original"] is None else base64.b64decode(letter["original"])
        match = [v for kind, k, v in BAD if kind == letter["error"]["class"] and v == original]
        assert match, f"original bytes not preserved for {letter['error']}"
        assert letter["error"]["message"] and letter["source"]["offset"] >= 0
    item_letter = next(d for d in letters if d["source"]["topic"] == env.topic_items)
    assert "title" in item_letter["error"]["message"] or "event_time" in item_letter["error"]["message"]

    # the worker never stopped and every valid event was applied, the unknown item included (counted)
    assert worker.alive()
    state = wait_until(lambda: (lambda s: s if s and s["interaction_count"] == len(valid) + 1 else None)(
        worker.get("/users/u1")), message="valid events applied")
    assert [h["item_id"] for h in state["history"]] == [v["item_id"] for v in valid] + ["not-in-catalog"]
    assert state["unknown_items"] == 1
    assert worker.metric("dead_letters_total") == expected_dead
    assert worker.metric("unknown_items_total") == 1
    assert worker.get("/health")["status"] == "ok"
