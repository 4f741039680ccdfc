"""The recommend agent's reading of summary events: fresh ones re-rank at once, others never stop it."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from streams.app import build_worker
from streams.settings import Settings


@pytest.fixture
def worker(tmp_path):
    return build_worker(Settings(data_dir=tmp_path, summary_model="none", caption_model="none"))


def message(value, offset=0):
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return SimpleNamespace(value=raw, topic="user-summaries", partition=1, offset=offset, timestamp=1000.0)


def summary(event_time: str, **extra) -> dict:
    return {"user_id": "u1", "summary": "The user appears to have a preference for noir.", "summary_version": 2,
            "interaction_count": 6, "block": [{"item_id": "i1", "event_time": event_time, "offset": 5}],
            "model": "m", "generated_at": event_time,
            "trigger": {"topic": "interactions", "partition": 1, "offset": 5, "event_time": event_time,
                        "timestamp": 999.5}, **extra}


def test_a_fresh_summary_schedules_its_user_at_once_with_its_own_text(worker):
    from streams.app import utcnow

    worker.on_summaries([SimpleNamespace(message=message(summary(utcnow()[:19] + "Z")))])
    (user, trigger), = worker.debouncer.pop_due()
    assert user == "u1" and trigger.kind == "summary" and trigger.broker_timestamp == 999.5
    assert trigger.offset == 5 and trigger.topic == "interactions"
    assert worker.fresh_summaries["u1"] == ("The user appears to have a preference for noir.", 2)


def test_stale_and_unreadable_summary_events_are_skipped_and_counted(worker):
    stale = summary("2001-01-01T00:00:00Z")
    bad = [b"not json", {"user_id": "u1"}, summary("2001-01-01T00:00:00Z", summary_version="two"),
           {**summary("2001-01-01T00:00:00Z"), "trigger": {"event_time": "yesterday"}}]
    worker.on_summaries([SimpleNamespace(message=message(stale))] +
                        [SimpleNamespace(message=message(b, n)) for n, b in enumerate(bad)])
    assert worker.debouncer.pop_due() == [] and worker.fresh_summaries == {}
    assert worker.metrics.get("summary_events_skipped_total") == len(bad)
