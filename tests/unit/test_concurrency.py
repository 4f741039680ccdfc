"""Work in threads against state the event loop writes: the catalog index, table reads, the pools."""
from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from models.candidates.retrieval import CatalogIndex
from streams.threads import read_concurrently, thread_pools
from streams.settings import Settings


def test_the_index_ranks_consistently_while_the_loop_grows_and_shrinks_it():
    """Readers rank while one writer upserts (growing the matrix from one row) and removes the
    newest, best-scoring items. Before, the reader sliced the old matrix with the new row count
    (IndexError when it set the invalid rows) and could return None for a row freed meanwhile."""
    box = {"index": CatalogIndex(8, capacity=1)}
    stop = threading.Event()
    problems, calls = [], [0]
    query = np.ones(8, dtype=np.float32)

    def reader():
        while not stop.is_set():
            try:
                hits = box["index"].top_k(query, 5, exclude={"i0", "i1"})
            except Exception as exc:  # noqa: BLE001 - every failure is the finding
                problems.append(repr(exc))
                continue
            calls[0] += 1
            ids = [h.item_id for h in hits]
            if None in ids or {"i0", "i1"} & set(ids) or len(ids) != len(set(ids)):
                problems.append(ids)

    readers = [threading.Thread(target=reader) for _ in range(2)]
    for thread in readers:
        thread.start()
    deadline, cycles = time.monotonic() + 3.0, 0
    try:
        while time.monotonic() < deadline:
            index = box["index"] = CatalogIndex(8, capacity=1)
            for n in range(300):
                index.upsert(f"i{n}", np.full(8, float(n), dtype=np.float32))  # the newest ranks first
                if n % 3 == 2:
                    index.remove(f"i{n}")  # and is gone at once
            cycles += 1
    finally:
        stop.set()
        for thread in readers:
            thread.join()
    assert problems == [] and calls[0] > 1000 and cycles > 50, (problems[:3], calls[0], cycles)


def test_lists_are_built_in_threads_while_the_loop_upserts_and_deletes_items():
    """The candidate stage in its pool, at the same time as items arrive and go on the loop."""
    from streams.stages.items import ItemsStage
    from streams.stages.recommendations import RecommendationsStage
    from streams.state import UserState
    from tests.unit.test_stages import events, item, make_services

    services = make_services(top_k=5)
    services.catalog.index = CatalogIndex(services.catalog.index.dim, capacity=1)  # grown as items come
    items, lists = ItemsStage(services), RecommendationsStage(services)
    states = [UserState(f"u{u}", interaction_count=3, seen=[f"i{u}", f"i{u + 1}"],
                        history=[{"item_id": f"i{u + j}", "type": "view", "event_time": "2026-01-01T00:00:00Z"}
                                 for j in range(2)]) for u in range(20)]
    built = []

    async def scenario():
        stop = asyncio.Event()

        async def emit():
            while not stop.is_set():
                built.extend(await services.off_loop(lists.candidates, states, 5, pool="lists"))

        emitter = asyncio.ensure_future(emit())
        for round_ in range(60):
            batch = [item(round_ * 10 + n) for n in range(10)]
            await items.process(events("items", batch, "item_id", start=round_ * 10))
            gone = [{"item_id": f"i{n}", "op": "delete", "event_time": "2026-01-01T00:00:00Z"}
                    for n in range(round_ * 10 - 20, round_ * 10 - 15) if n >= 0]
            if gone:
                await items.process(events("items", gone, "item_id", start=100_000 + round_ * 10))
            await asyncio.sleep(0)
        stop.set()
        await emitter

    asyncio.run(scenario())
    assert len(built) >= 20
    for (strategy, fused, _), state in zip(built, states * (len(built) // len(states) + 1)):
        ids = [f.item_id for f in fused]
        assert None not in ids and len(ids) == len(set(ids)) and not set(ids) & set(state.seen)


def test_a_read_that_meets_a_concurrent_change_is_made_again_and_other_errors_are_not():
    attempts = []

    def flaky():
        attempts.append(1)
        if len(attempts) < 3:
            raise RuntimeError("dictionary changed size during iteration")
        return "read"

    assert read_concurrently(flaky) == "read" and len(attempts) == 3

    def always():
        raise RuntimeError("dictionary changed size during iteration")

    with pytest.raises(RuntimeError, match="changed size"):
        read_concurrently(always, attempts=4)
    with pytest.raises(RuntimeError, match="other"):
        read_concurrently(lambda: (_ for _ in ()).throw(RuntimeError("other")))


def test_a_real_dict_race_is_survived():
    """A dict a second thread grows now and then, as the loop does Faust's partition databases."""
    shared = {n: n for n in range(20_000)}
    stop = threading.Event()

    def grow():
        n = len(shared)
        while not stop.is_set():
            shared[n] = n
            n += 1
            time.sleep(0.002)

    writer = threading.Thread(target=grow)
    writer.start()
    try:
        for _ in range(50):
            assert len(read_concurrently(lambda: [v for v in shared.values()], attempts=50)) >= 20_000
    finally:
        stop.set()
        writer.join()


def test_a_long_model_call_does_not_hold_up_lists_scans_or_broker_reads():
    pools = thread_pools(Settings(model_threads=1))
    release = threading.Event()
    blocked = pools["models"].submit(release.wait, 30)
    try:
        started = time.monotonic()
        for name in ("lists", "scans", "broker"):
            assert pools[name].submit(lambda: name).result(timeout=5) == name
        assert time.monotonic() - started < 5
        queued = pools["models"].submit(lambda: "after")
        assert not queued.done()  # bounded: the second model call waits for the first
    finally:
        release.set()
    assert blocked.result(timeout=5) and queued.result(timeout=5) == "after"
    assert [pools[name]._max_workers for name in ("models", "lists", "scans", "broker")] == [1, 1, 1, 2]
