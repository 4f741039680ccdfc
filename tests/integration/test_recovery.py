"""Crash and restart: no accepted event lost, none applied twice; state survives RocksDB loss."""
from __future__ import annotations

import shutil

import pytest

from streams.replay import movielens_events, replay
from tests.conftest import wait_until
from tests.integration.helpers import expected_states, kill_mid_replay

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def observed(worker, users) -> dict[str, dict]:
    out = {}
    for user in users:
        state = worker.get(f"/users/{user}") or {}
        out[user] = {k: state.get(k) for k in ("interaction_count", "history", "seen")}
    return out


def wait_all_applied(worker, total: int, users, timeout=180):
    def done():
        states = observed(worker, users)
        return states if sum(s["interaction_count"] or 0 for s in states.values()) >= total else None

    return wait_until(done, timeout=timeout, interval=1.0, message=f"{total} interactions applied")


def test_kill9_during_replay_loses_nothing_and_applies_nothing_twice(topic_factory, worker_factory):
    env = topic_factory()
    events = movielens_events()[:5000]
    expected = expected_states(events, env.settings)
    worker = worker_factory(env).start()
    kill_mid_replay(env, worker, events, rate=2500, after=500)  # the replay returns at ~2 s, the worker still applying

    worker.start()
    states = wait_all_applied(worker, len(events), expected)
    assert states == expected
    # give a lagging duplicate the chance to show up, then check again
    wait_until(lambda: all(v == 0 for v in lag(worker).values()), message="no lag")
    assert observed(worker, expected) == expected


def test_restart_and_rebuild_from_changelog(topic_factory, worker_factory):
    env = topic_factory()
    events = movielens_events(users=25)[:1500]
    expected = expected_states(events, env.settings)
    worker = worker_factory(env).start()
    replay(env.bootstrap_servers, env.topic_interactions, events, backfill=False, progress=False)
    first = wait_all_applied(worker, len(events), expected)
    assert first == expected
    full_before = {u: worker.get(f"/users/{u}") for u in expected}

    worker.stop()  # graceful: state comes back from RocksDB
    worker.start()
    assert observed(worker, expected) == expected

    worker.stop()  # lose the local RocksDB: state is rebuilt from the changelog topic
    shutil.rmtree(env.settings.state_dir)
    worker.start()
    rebuilt = {u: worker.get(f"/users/{u}") for u in expected}
    strip = lambda d: {k: v for k, v in d.items() if k != "last_recommendation"}  # noqa: E731 (in-memory only)
    assert {u: strip(s) for u, s in rebuilt.items()} == {u: strip(s) for u, s in full_before.items()}
    assert worker.metric("events_applied_total") == 0  # nothing was re-applied from the input topic


def test_offsets_committed_but_never_applied_are_read_and_applied_once(topic_factory, worker_factory):
    """The group's committed offset is no record of what was applied (measured: the new owner of
    a partition without a committed offset began at its end, and Faust committed from there).
    With the worker stopped, events are produced and the group's offsets committed past them;
    the restarted worker applies every one of them once, with no further event to wake it."""
    from confluent_kafka import Consumer, TopicPartition

    env = topic_factory()
    events = movielens_events(users=25)[:1500]
    first, rest = events[:600], events[600:]
    worker = worker_factory(env).start()
    replay(env.bootstrap_servers, env.topic_interactions, first, backfill=False, progress=False)
    assert wait_all_applied(worker, len(first), expected_states(first, env.settings)) == expected_states(
        first, env.settings)
    worker.stop()

    replay(env.bootstrap_servers, env.topic_interactions, rest, backfill=False, progress=False)
    group = Consumer({"bootstrap.servers": env.bootstrap_servers, "group.id": env.settings.group_id,
                      "enable.auto.commit": False})
    ends = [TopicPartition(env.topic_interactions, p, group.get_watermark_offsets(
        TopicPartition(env.topic_interactions, p), timeout=10)[1]) for p in range(env.settings.user_partitions)]
    group.commit(offsets=ends, asynchronous=False)
    group.close()

    worker.start()
    expected = expected_states(events, env.settings)
    assert wait_all_applied(worker, len(events), expected) == expected
    assert worker.metric("offsets_recovered_total") == len(rest)
    assert worker.metric("events_applied_total") == len(rest)


def lag(worker) -> dict[str, float]:
    out = {}
    for line in worker.get("/metrics").splitlines():
        if line.startswith("mmsr_consumer_lag{"):
            out[line.split(" ")[0]] = float(line.rsplit(" ", 1)[1])
    return out
