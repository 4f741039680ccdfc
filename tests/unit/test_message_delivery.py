"""The consumer's per-message ``wait_first``, as the worker patches it: the same outcomes as mode's
(the callback runs to its end, a stopped flow interrupts a blocked delivery, errors propagate),
without mode's four tasks when the delivery does not block."""
from __future__ import annotations

import asyncio
import gc
import warnings

import pytest
from mode import Service
from mode.utils.locks import Event

from streams.kafka.patches.throughput import deliver_inline


class Drainer(Service):
    """Stands in for Faust's consumer: a mode Service whose drain loop calls ``wait_first``."""


deliver_inline(Drainer)


def run(coro):
    return asyncio.run(coro)


def test_the_patch_is_applied_once_and_to_faust_s_consumer():
    from faust.transport.consumer import Consumer

    deliver_inline()
    patched = Consumer.wait_first
    deliver_inline()
    assert getattr(patched, "eager", False) and Consumer.wait_first is patched


def test_a_delivery_that_does_not_block_returns_its_result_and_starts_no_flow_waiter():
    async def body():
        drainer, flow = Drainer(), Event()
        delivered = []

        async def deliver(n):
            delivered.append(n)
            return n * 2

        for n in range(3):
            results = await drainer.wait_first(deliver(n), flow.wait())
            assert results.results == [n * 2] and not results.stopped
        assert delivered == [0, 1, 2] and not flow._waiters  # the flow coroutine never ran

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "coroutine ... was never awaited" would be raised here
        run(body())
        gc.collect()


def test_a_blocked_delivery_finishes_when_room_is_made():
    async def body():
        drainer, flow, room = Drainer(), Event(), asyncio.Event()
        done = []

        async def deliver():
            await room.wait()  # a full stream buffer
            done.append(True)
            return "put"

        asyncio.get_running_loop().call_later(0.05, room.set)
        results = await drainer.wait_first(deliver(), flow.wait())
        assert done == [True] and "put" in results.results

    run(body())


def test_a_blocked_delivery_is_cancelled_when_the_flow_is_suspended():
    async def body():
        drainer, flow = Drainer(), Event()
        cancelled = []

        async def deliver():
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.append(True)
                raise

        asyncio.get_running_loop().call_later(0.05, flow.set)
        await asyncio.wait_for(drainer.wait_first(deliver(), flow.wait()), timeout=5)
        await asyncio.sleep(0)
        assert cancelled == [True]

    run(body())


def test_cancelling_the_drain_loop_cancels_its_delivery():
    async def body():
        drainer, flow = Drainer(), Event()

        async def deliver():
            await asyncio.sleep(30)

        drain = asyncio.ensure_future(drainer.wait_first(deliver(), flow.wait()))
        await asyncio.sleep(0)  # the drain is inside wait_first, the delivery not yet started
        drain.cancel()
        with pytest.raises(asyncio.CancelledError):
            await drain
        await asyncio.sleep(0.01)
        # the delivery was cancelled with the drain, not left running on its own
        assert all(t.done() for t in asyncio.all_tasks() if t is not asyncio.current_task())

    run(body())


def test_an_error_in_the_delivery_propagates():
    async def body():
        async def deliver():
            raise ValueError("bad message")

        with pytest.raises(ValueError, match="bad message"):
            await Drainer().wait_first(deliver(), Event().wait())

    run(body())


def test_other_calls_go_to_mode_s_wait_first():
    async def body():
        drainer = Drainer()
        stopped = drainer._stopped
        stopped.set()  # a stopping service: mode reports it as stopped, whatever finished first

        async def deliver():
            return 1

        results = await drainer.wait_first(deliver(), Event().wait())
        assert results.stopped

    run(body())


def test_a_delivery_that_waits_several_times_is_resumed_where_it_waited_each_time():
    """The callback runs inline up to its first wait, then in a task (``resumed``): every later
    wait, and what the awaited futures send or raise, reaches it as if it had run in one task."""
    async def body():
        drainer, flow = Drainer(), Event()
        loop = asyncio.get_running_loop()
        first, second, failing = loop.create_future(), loop.create_future(), loop.create_future()
        steps = []

        async def deliver():
            steps.append(await first)
            steps.append(await second)
            try:
                await failing
            except KeyError as exc:
                steps.append(f"caught {exc.args[0]}")
            return "delivered"

        loop.call_later(0.02, first.set_result, 1)
        loop.call_later(0.04, second.set_result, 2)
        loop.call_later(0.06, failing.set_exception, KeyError("x"))
        results = await drainer.wait_first(deliver(), flow.wait())
        assert steps == [1, 2, "caught x"] and "delivered" in results.results and not results.stopped

    run(body())
