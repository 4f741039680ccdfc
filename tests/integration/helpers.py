"""Small synthetic catalog and interaction streams for the integration tests."""
from __future__ import annotations

import concurrent.futures
import contextlib
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


def aged_log(events: int, fresh: int, users: int, items: int, seed: int) -> list[dict]:
    """``events`` interactions in time order, items drawn with a long tail; all but the last
    ``fresh`` are older than the freshness cut (a backfill), the last ``fresh`` are recent."""
    import random

    rng = random.Random(seed)
    out = []
    for n in range(events):
        age = 90_000 - n if n < events - fresh else 1_800 - (n - (events - fresh)) * 0.5
        out.append({"user_id": f"u{rng.randrange(users)}", "item_id": f"i{min(int(rng.expovariate(0.08)), items - 1)}",
                    "type": "click", "event_time": now(-age)})
    return out


def decode(messages) -> list[dict]:
    return [json.loads(m.value()) for m in messages]


def topic_events(env, topic: str, schema: str, timeout: float = 20) -> list[dict]:
    """Every event on ``topic``, each checked against its JSON schema (a bad event fails the test)."""
    events = decode(read_all(env.bootstrap_servers, topic, timeout=timeout))
    return [schemas.validate(schema, event) for event in events]


def expected_states(events, settings) -> dict[str, dict]:
    """The user state a single run without any crash reaches: the same events applied once, in order."""
    from streams.state import UserState

    states: dict[str, UserState] = {}
    for offset, e in enumerate(events):
        state = states.setdefault(e["user_id"], UserState(e["user_id"]))
        state.apply(e, 0, offset, tail=settings.history_tail, seen_cap=settings.seen_cap,
                    pending_cap=settings.summary_block)
    return {u: {"interaction_count": s.interaction_count, "history": s.history, "seen": s.seen}
            for u, s in states.items()}


def expected_neighbours(events, settings) -> tuple[dict[str, dict], int]:
    """Each item's count and neighbours as one process computes them, and the increments sent."""
    from models.candidates.cooccurrence import pair_entries
    from models.evaluation.prequential import SourceState

    config = settings.cooccurrence_config()
    state = SourceState(config)
    entries = 0
    for e in events:
        entries += len(pair_entries(state.histories.get(e["user_id"], []), e["item_id"], 0, 0, 0.0, config))
        state.apply(e)
    return {i: {"count": r["count"], "neighbours": r["neighbours"]} for i, r in state.records.items()}, entries


def lists_behind(env, want_users: dict[str, dict]) -> tuple[dict[str, dict], dict[str, tuple]]:
    """Each user's newest list on the recommendations topic (a user's lists are in one partition,
    so in topic order), and the users whose newest list does not count all their events:
    user -> (the count it has or None, the count wanted)."""
    newest: dict[str, dict] = {}
    for rec in topic_events(env, env.topic_recommendations, "recommendation", timeout=30):
        newest[rec["user_id"]] = rec
    behind = {u: (newest[u]["interaction_count"] if u in newest else None, want["interaction_count"])
              for u, want in want_users.items()
              if u not in newest or newest[u]["interaction_count"] != want["interaction_count"]}
    return newest, behind


def observed_neighbours(worker, n_items: int) -> dict[str, dict]:
    out = {}
    for n in range(n_items):
        record = worker.get(f"/items/i{n}/neighbours")
        if record is not None:
            out[f"i{n}"] = {"count": record["count"], "neighbours": record["neighbours"]}
    return out


def wait_for_neighbours(worker, n_items: int, want: dict[str, dict], timeout: float, message: str) -> None:
    """Poll until the worker's records equal ``want``; else fail naming each item that differs
    (count and the neighbour weights that differ: a lost or doubled increment shows which)."""
    from streams.harness.process import wait_until

    try:
        wait_until(lambda: observed_neighbours(worker, n_items) == want, timeout=timeout, interval=2.0, message=message)
    except AssertionError:
        got = observed_neighbours(worker, n_items)
        differ = {}
        for item in sorted(set(got) | set(want)):
            g, w = got.get(item) or {"count": None, "neighbours": {}}, want.get(item) or {"count": None, "neighbours": {}}
            weights = {o: (g["neighbours"].get(o), w["neighbours"].get(o)) for o in set(g["neighbours"]) | set(w["neighbours"])
                       if g["neighbours"].get(o) != w["neighbours"].get(o)}
            if g["count"] != w["count"] or weights:
                differ[item] = {"count (got, want)": (g["count"], w["count"]), "weights (got, want)": weights}
        raise AssertionError(f"timed out after {timeout}s waiting for {message}; {len(differ)} items differ: {differ}")


def kill_mid_replay(env, worker, events: list[dict], rate: float, after: int):
    """Replay ``events`` at ``rate`` and kill -9 ``worker`` once it has applied ``after`` of them,
    while the replay is still producing (a worker faster than the replay would otherwise have
    applied everything by the time a replay that ran first returned); checks the kill came while
    the worker still had events to apply. The replay's report."""
    from streams.harness.process import wait_until
    from streams.replay import replay

    with replaying(lambda: replay(env.bootstrap_servers, env.topic_interactions, events, rate=rate, backfill=False,
                                  progress=False)) as report:
        wait_until(lambda: worker.metric("events_applied_total") > after, timeout=60, interval=0.1,
                   message="mid-replay")
        applied_before = worker.metric("events_applied_total")
        worker.kill9()
    assert applied_before < len(events), "the crash has to happen mid-replay"
    return report.result()


@contextlib.contextmanager
def replaying(produce):
    """Run ``produce`` (a replay) in a thread for the body of the block; a future of its result,
    done (or its error raised) when the block ends."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        future = pool.submit(produce)
        yield future
    future.result()
