"""The restore after a rebalance: a stale one is dropped, a failed one stops the worker."""
from __future__ import annotations

import asyncio

from streams.app import Worker
from streams.settings import Settings
from streams.tables import PartitionedTable
from tests.unit.test_stages import HashEmbedder


def worker_with_state(tmp_path, states: dict) -> Worker:
    worker = Worker(Settings(data_dir=tmp_path, caption_model="none", summary_model="none"), embedder=HashEmbedder())
    services = worker.services
    services.user_state = PartitionedTable(states, services.settings.topic_interactions)
    services.item_profiles, services.neighbours = {}, {}
    worker.assigned = {0}
    return worker


def recording_crashes(worker: Worker) -> list:
    """The exceptions the worker's app is crashed with (instead of stopping the test's process)."""
    crashes = []

    async def crash(exc):
        crashes.append(exc)

    worker.app.crash = crash
    return crashes


OWED = {"u1": {"partition": 0, "owed": True}, "u2": {"partition": 0, "backfill_pending": True}}


def test_a_restore_begun_before_a_rebalance_is_dropped_when_it_ends_after_it(tmp_path):
    async def scenario():
        worker = worker_with_state(tmp_path, dict(OWED))
        services = worker.services
        worker.generation = 2  # a revoke and a new assignment happened since generation 1 began
        services.backfill_pending = {0: {"newer"}}
        await worker.restore(generation=1)
        assert not services.restored.is_set()
        assert services.backfill_pending == {0: {"newer"}} and len(services.due) == 0  # nothing overwritten
        await worker.restore(generation=2)
        assert services.restored.is_set()
        assert services.backfill_pending == {0: {"u2"}} and len(services.due) == 1

    asyncio.run(scenario())


def test_a_new_assignment_cancels_the_restore_still_running_for_the_old_one(tmp_path):
    async def scenario():
        worker = worker_with_state(tmp_path, dict(OWED))
        worker.start_restore()
        first = worker.restoring
        worker.start_restore()
        await asyncio.sleep(0)
        assert first.cancelled() or first.done()
        await worker.restoring
        assert worker.services.restored.is_set() and worker.generation == 2

    asyncio.run(scenario())


def test_a_failed_restore_crashes_the_app_and_health_says_how_long_it_has_been_starting(tmp_path):
    async def scenario():
        worker = worker_with_state(tmp_path, {"u1": "not a state object"})
        crashes = recording_crashes(worker)
        assert worker.services.restored.starting_seconds() >= 0
        worker.start_restore()
        await asyncio.gather(worker.restoring, return_exceptions=True)
        for _ in range(3):
            await asyncio.sleep(0)
        assert len(crashes) == 1 and isinstance(crashes[0], AttributeError)
        assert not worker.services.restored.is_set()

    asyncio.run(scenario())


def test_readiness_counts_from_the_last_time_it_was_lost():
    async def scenario():
        from streams.services import Readiness

        ready = Readiness()
        ready.set()
        assert ready.starting_seconds() is None
        await asyncio.sleep(0.05)
        ready.clear()
        assert 0 <= ready.starting_seconds() < 0.05

    asyncio.run(scenario())


def test_a_restore_that_fails_after_its_partitions_changed_does_not_stop_the_worker(tmp_path):
    async def scenario():
        worker = worker_with_state(tmp_path, {"u1": "not a state object"})
        crashes = recording_crashes(worker)
        worker.start_restore()
        failing = worker.restoring
        worker.generation += 1  # a revoke while it ran: what it read may be half gone
        await asyncio.gather(failing, return_exceptions=True)
        for _ in range(3):
            await asyncio.sleep(0)
        assert crashes == []

    asyncio.run(scenario())
