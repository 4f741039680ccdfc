"""Small synthetic catalog and interaction streams for the integration tests."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import schemas
from streams.kafka.client import read_all

GENRES = ["Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi"]


def catalog(n: int = 36) -> list[dict]:
    return [{"item_id": f"i{i}", "op": "upsert", "title": f"{GENRES[i % 6]} story number {i}",
             "categories": [GENRES[i % 6]], "event_time": now()} for i in range(n)]


def now(offset_seconds: float = 0) -> str:
    t = datetime.now(timezone.utc) + timedelta(seconds=offset_seconds)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def interactions(users: int = 5, per_user: int = 4, n_items: int = 36) -> list[dict]:
    out = []
    for u in range(users):
        for j in range(per_user):
            out.append({"user_id": f"u{u}", "item_id": f"i{(u * 7 + j * 6) % n_items}", "type": "click",
                        "event_time": now()})
    return out


def decode(messages) -> list[dict]:
    return [json.loads(m.value()) for m in messages]


def topic_events(env, topic: str, schema: str, timeout: float = 20) -> list[dict]:
    """Every event on ``topic``, each checked against its JSON schema (a bad event fails the test)."""
    events = decode(read_all(env.bootstrap_servers, topic, timeout=timeout))
    return [schemas.validate(schema, event) for event in events]
