"""Three workers in one group, one of them killed by -9 mid-replay: the survivors carry on exactly."""
from __future__ import annotations

import pytest

from models import registry
from streams.kafka.client import ItemProducer
from streams.replay import replay
from tests.conftest import wait_until
from tests.integration import helpers

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ITEMS, USERS, EVENTS, FRESH = 60, 400, 20_000, 2_000
# no pruning and whole weights, so the item-keyed sums are exact; a short session timeout, so the
# group notices the killed worker in seconds
# recurrent summaries by the tiny random LLaVA (its text is noise; its versions are what count)
SETTINGS = {"user_partitions": 8, "cooc_window": 5, "cooc_neighbours": 1000, "cooc_decay": 1.0,
            "session_timeout": 10.0, "debounce_seconds": 0.2, "summary_model": registry.TINY_LLAVA,
            "summary_max_new_tokens": 8}


def log(seed: int = 11) -> list[dict]:
    """EVENTS interactions in time order; all but the last FRESH are older than the freshness cut."""
    return helpers.aged_log(EVENTS, FRESH, USERS, ITEMS, seed)


def user_view(worker, user: str) -> dict | None:
    state = worker.get(f"/users/{user}")
    if not state or "interaction_count" not in state:
        return None  # 404 or 503 while a rebalance runs
    return {k: state[k] for k in ("interaction_count", "history", "seen")} | {"summary_version": state["summary_version"]}


def test_three_workers_survive_a_kill9_with_the_state_of_one_run(topic_factory, worker_factory):
    env = topic_factory(**SETTINGS)
    workers = [worker_factory(env, peer=n > 0) for n in range(3)]
    for w in workers:
        w.start(timeout=300)
    wait_until(lambda: all(w.get("/health")["status"] == "ok" for w in workers), timeout=180, message="three healthy")
    with ItemProducer(env.bootstrap_servers, env.topic_items) as producer:
        for item in helpers.catalog(ITEMS):
            producer.send(item)
    wait_until(lambda: all(w.metric("catalog_items") >= ITEMS for w in workers), timeout=120, message="catalog")

    events = log()
    want_users = helpers.expected_states(events, env.settings)
    want_items, _ = helpers.expected_neighbours(events, env.settings)
    victim = workers[1]
    # killed while the replay is still producing, so the kill is mid-replay however fast the workers are
    with helpers.replaying(lambda: replay(env.bootstrap_servers, env.topic_interactions, events, rate=4000,
                                          progress=False)) as replayed:
        wait_until(lambda: victim.metric("events_applied_total") > 1000, timeout=120, interval=0.1,
                   message="mid-replay")
        applied = sum(w.metric("events_applied_total") for w in workers)
        victim.kill9()
    report = replayed.result()
    assert applied < EVENTS, "the kill has to come mid-replay"
    survivors = [workers[0], workers[2]]

    # every user answers on every survivor (table_route forwards to the owner), with the state of one run
    for w in survivors:
        short: dict[str, tuple] = {}

        def complete(w=w):
            got = {u: user_view(w, u) for u in want_users}
            short.clear()
            short.update({u: (got[u] and got[u]["interaction_count"], want_users[u]["interaction_count"])
                          for u in want_users if not got[u]
                          or got[u]["interaction_count"] < want_users[u]["interaction_count"]})
            return None if short else got

        try:
            got = wait_until(complete, timeout=300, interval=2.0, message=f"all {len(want_users)} users on {w.url}")
        except AssertionError:
            example = next(iter(short))
            raise AssertionError(f"{len(short)} users incomplete on {w.url} (got, want): {dict(list(short.items())[:10])}; "
                                 f"{example}: {w.get('/users/' + example)!r}; health {[s.get('/health') for s in survivors]}; "
                                 f"flow {[s.get('/debug/flow') for s in survivors]}") from None
        for user, want in want_users.items():
            # every full block of distinct items summarized once: version = distinct items // B
            assert got[user] == {**want, "summary_version": len(want["seen"]) // env.summary_block}, user
    assert sum(w.metric("summary_failures_total") for w in survivors) == 0
    for w in survivors:  # the item-keyed aggregates: every increment once, whoever wrote it
        wait_until(lambda w=w: helpers.observed_neighbours(w, ITEMS) == want_items, timeout=120,
                   message=f"co-occurrence counts on {w.url}")

    # lists: every user's newest list reflects all of their events: the fresh users' lists are owed
    # by their interactions, the others' by the backfill markers (a fresh user may get either last)
    fresh = {e["user_id"] for e in events[-FRESH:]}
    gaps: dict = {}

    def lists():
        newest, behind = helpers.lists_behind(env, want_users)
        gaps.update(behind=len(behind), fresh_behind=len(set(behind) & fresh), examples=dict(list(behind.items())[:5]))
        return None if behind else newest

    try:
        newest = wait_until(lists, timeout=180, interval=5.0, message="lists")
    except AssertionError:
        raise AssertionError(f"users whose newest list misses events ({len(fresh)} fresh users, "
                             f"{report.markers} markers): {gaps}") from None
    assert any(newest[u]["trigger"]["kind"] == "interaction" for u in fresh)
