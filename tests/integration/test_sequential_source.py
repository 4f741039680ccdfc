"""The sequential candidate source in the worker: trained, saved, served, replaced without a restart."""
from __future__ import annotations

import pytest

from models.config import EaseConfig, SASRecConfig
from models.candidates.sequential import SequentialRetriever, read_version, train_into
from streams.kafka.client import InteractionProducer, ItemProducer
from tests.conftest import wait_until
from tests.integration import helpers

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def tiny_model(directory, seed: int) -> str:
    sequences = {f"u{n}": [f"i{(n + j) % 24}" for j in range(8)] for n in range(30)}
    model = SequentialRetriever.train(sequences, SASRecConfig(hidden=16, blocks=1, max_len=8, epochs=3, seed=seed))
    model.save_pretrained(directory)
    return model.version


def lists_for(env, user):
    return [r for r in helpers.topic_events(env, env.topic_recommendations, "recommendation") if r["user_id"] == user]


def test_the_worker_serves_the_sequential_model_and_picks_up_a_new_version(topic_factory, worker_factory, tmp_path):
    first = tiny_model(tmp_path / "sequential", seed=1)
    env = topic_factory(retrieval_model=str(tmp_path / "sequential"), retrieval_poll_seconds=0.5,
                        weight_cooccurrence=0.0, weight_content=0.0, weight_trending=0.0)
    worker = worker_factory(env).start()
    pid = worker.proc.pid
    with ItemProducer(env.bootstrap_servers, env.topic_items) as producer:
        for item in helpers.catalog(24):
            producer.send(item)
    wait_until(lambda: worker.metric("catalog_items") >= 24, timeout=120, message="catalog")
    with InteractionProducer(env.bootstrap_servers, env.topic_interactions) as producer:
        for item in ("i0", "i1", "i2"):
            producer.interaction("u0", item, "click", helpers.now())
    rec = wait_until(lambda: next((r for r in lists_for(env, "u0") if r["interaction_count"] == 3), None),
                     timeout=60, message="a list after three interactions")
    assert rec["versions"]["sequential"] == first and rec["strategy"] == "blend"
    assert len(rec["items"]) == 10 and all(i["sources"] == ["sequential"] for i in rec["items"])
    assert not {i["item_id"] for i in rec["items"]} & {"i0", "i1", "i2"}

    second = tiny_model(tmp_path / "sequential", seed=2)  # retrained in place (written beside, renamed)
    assert second != first
    wait_until(lambda: worker.metric("retrieval_model_swaps_total") >= 2, timeout=60, message="new version loaded")
    with InteractionProducer(env.bootstrap_servers, env.topic_interactions) as producer:
        producer.interaction("u0", "i3", "click", helpers.now())
    later = wait_until(lambda: next((r for r in lists_for(env, "u0") if r["interaction_count"] == 4), None),
                       timeout=60, message="a list after the swap")
    assert later["versions"]["sequential"] == second
    assert worker.proc.pid == pid and worker.alive()  # no restart
    # i3's item pairs came after seconds without any: the guard once took the stage's batch window
    # for a stall (the record 119 ms old) and read them from the broker itself
    wait_until(lambda: worker.metric("pair_entries_applied_total") == worker.metric("pair_entries_total") > 0,
               timeout=30, message="every item-pairs increment folded")
    assert worker.metric("stalled_catch_ups_total") == 0


def test_the_worker_serves_ease_from_the_retrieval_directory(topic_factory, worker_factory, tmp_path):
    """EASE, trained beside SASRec in the directory MMSR_RETRIEVAL_MODEL names, ranks the user's
    list by its own scores over everything the user has seen."""
    sequences = {f"u{n}": [f"i{(n + j) % 24}" for j in range(8)] for n in range(30)}
    events = [{"user_id": u, "item_id": i, "event_time": f"2021-03-01T00:{n:02d}:00Z"}
              for u, items in sequences.items() for n, i in enumerate(items)]
    train_into(tmp_path / "retrieval", events, SASRecConfig(hidden=16, blocks=1, max_len=8, epochs=1),
               echo=lambda _: None, ease=EaseConfig(l2=1.0))
    ease = SequentialRetriever.from_pretrained(tmp_path / "retrieval").ease
    env = topic_factory(retrieval_model=str(tmp_path / "retrieval"), weight_cooccurrence=0.0, weight_sequential=0.0,
                        weight_content=0.0, weight_trending=0.0, weight_ease=1.0)
    worker = worker_factory(env).start()
    with ItemProducer(env.bootstrap_servers, env.topic_items) as producer:
        for item in helpers.catalog(24):
            producer.send(item)
    wait_until(lambda: worker.metric("catalog_items") >= 24, timeout=120, message="catalog")
    history = ["i0", "i5", "i1", "i9"]
    with InteractionProducer(env.bootstrap_servers, env.topic_interactions) as producer:
        for item in history:
            producer.interaction("u0", item, "click", helpers.now())
    rec = wait_until(lambda: next((r for r in lists_for(env, "u0") if r["interaction_count"] == 4), None),
                     timeout=60, message="a list after four interactions")
    expected = [item for item, _ in ease.top_k([history], 10, [set()])[0]]
    assert [i["item_id"] for i in rec["items"]] == expected
    assert all(i["sources"] == ["ease"] for i in rec["items"]) and rec["strategy"] == "blend"
    assert rec["versions"]["sequential"] == read_version(tmp_path / "retrieval")
