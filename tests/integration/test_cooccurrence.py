"""Co-occurrence in the stream: right with any number of workers, and across a kill -9."""
from __future__ import annotations

import random

import pytest

from streams.kafka.client import ItemProducer
from streams.replay import replay
from tests.conftest import wait_until
from tests.integration import helpers

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ITEMS = 36
SETTINGS = {"cooc_window": 5, "cooc_neighbours": 1000, "cooc_decay": 1.0}  # no pruning, whole weights: exact sums


def log(users: int = 60, per_user: int = 14, seed: int = 3) -> list[dict]:
    rng = random.Random(seed)
    events = []
    for n in range(users * per_user):
        user = f"u{rng.randrange(users)}"
        item = f"i{min(int(rng.expovariate(0.12)), ITEMS - 1)}"  # a few popular items, a long tail
        events.append({"user_id": user, "item_id": item, "type": "click", "event_time": helpers.now(-7200 + n)})
    return events


def start_with_catalog(env, workers):
    for w in workers:
        w.start()
    with ItemProducer(env.bootstrap_servers, env.topic_items) as producer:
        for item in helpers.catalog(ITEMS):
            producer.send(item)
    wait_until(lambda: all(w.metric("catalog_items") >= ITEMS for w in workers), timeout=120, message="catalog")


def test_two_workers_give_the_counts_one_process_computes(topic_factory, worker_factory):
    env = topic_factory(**SETTINGS)
    workers = [worker_factory(env), worker_factory(env, peer=True)]
    start_with_catalog(env, workers)
    assert all(len(w.get("/health")["assigned"]) < 2 * env.user_partitions + 10 for w in workers)
    events = log()
    want, entries = helpers.expected_neighbours(events, env.settings)
    replay(env.bootstrap_servers, env.topic_interactions, events, backfill=False, progress=False)
    wait_until(lambda: sum(w.metric("pair_entries_applied_total") for w in workers) >= entries, timeout=180,
               message=f"{entries} increments applied")
    assert all(w.metric("events_applied_total") > 0 for w in workers)  # both workers held user partitions
    for w in workers:  # each worker reads the whole item-keyed table, whichever worker wrote a record
        wait_until(lambda: helpers.observed_neighbours(w, ITEMS) == want, timeout=60, message="every record seen by this worker")


def test_kill9_during_a_replay_neither_loses_nor_doubles_increments(topic_factory, worker_factory):
    env = topic_factory(**SETTINGS)
    worker = worker_factory(env)
    start_with_catalog(env, [worker])
    events = log(users=80, per_user=40, seed=5)
    want, entries = helpers.expected_neighbours(events, env.settings)
    helpers.kill_mid_replay(env, worker, events, rate=1500, after=300)
    worker.start()
    helpers.wait_for_neighbours(worker, ITEMS, want, timeout=240, message="the counts of a run without the crash")
