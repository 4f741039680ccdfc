"""The broker stops and starts again mid-replay: the worker reconnects, nothing lost or applied twice."""
from __future__ import annotations

import threading
import time

import pytest

from streams.kafka.launcher import LocalKafka
from streams.replay import movielens_events, replay
from tests.conftest import make_env, wait_until
from tests.integration.helpers import expected_states

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_broker_restart_mid_replay_loses_and_doubles_nothing(tmp_path, worker_factory):
    broker = LocalKafka(tmp_path / "own-broker")  # its own broker: the session's stays up for the other tests
    info = broker.start(port=0, timeout=120)
    try:
        env = make_env(info.bootstrap, tmp_path)
        events = movielens_events()[:6000]
        expected = expected_states(events, env.settings)
        worker = worker_factory(env).start(timeout=300)
        sender = threading.Thread(target=replay, args=(env.bootstrap_servers, env.topic_interactions, events),
                                  kwargs={"rate": 1000, "backfill": False, "progress": False})
        sender.start()  # the replay's idempotent producer retries through the outage
        wait_until(lambda: worker.metric("events_applied_total") > 1500, timeout=60, interval=0.1,
                   message="mid-replay")
        broker.stop()
        time.sleep(5)
        assert worker.alive(), "the worker has to ride out the outage, not exit"
        broker.start(port=info.port, controller_port=info.controller_port, timeout=120)
        sender.join(timeout=300)
        assert not sender.is_alive()

        def states():
            got = {u: worker.get(f"/users/{u}") or {} for u in expected}
            got = {u: {k: s.get(k) for k in ("interaction_count", "history", "seen")} for u, s in got.items()}
            return got if sum(s["interaction_count"] or 0 for s in got.values()) >= len(events) else None

        assert wait_until(states, timeout=240, interval=2.0, message="every event applied") == expected
        assert worker.metric("events_applied_total") <= len(events)  # a redelivery is skipped, not re-applied
    finally:
        broker.stop()
