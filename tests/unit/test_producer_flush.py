"""Faust's producer-buffer flush, as the worker patches it: it returns only when the buffer is empty."""
from __future__ import annotations

import asyncio

from faust.transport.producer import ProducerBuffer

from streams.kafka.patches.correctness import drain_producer_buffer_on_flush


class SlowBuffer:
    """A buffer whose sender needs 0.3 s per record (a busy loop or a full aiokafka accumulator)."""

    state = "running"

    def __init__(self, records: int):
        self.size = records
        self.message_sent = asyncio.Event()

    async def send_slowly(self):
        while self.size:
            await asyncio.sleep(0.3)
            self.size -= 1
            self.message_sent.set()


def flushed_size(flush, records: int = 3) -> int:
    async def run():
        buffer = SlowBuffer(records)
        sender = asyncio.ensure_future(buffer.send_slowly())
        await flush(buffer)
        left = buffer.size
        sender.cancel()
        return left

    return asyncio.run(run())


def test_faust_flush_gives_up_with_records_unsent_and_the_patched_one_drains():
    original = ProducerBuffer.flush_atmost
    assert flushed_size(lambda b: original(b, None)) > 0  # what Faust does: commits could pass unsent writes
    drain_producer_buffer_on_flush()
    assert getattr(ProducerBuffer.flush, "drains", False)
    assert flushed_size(ProducerBuffer.flush) == 0
