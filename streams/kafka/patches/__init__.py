"""What the worker changes in Faust and aiokafka, by purpose: ``correctness`` (no event lost or
applied twice), ``throughput`` (per-message work removed) and ``batching`` (how events reach the
stages). ``apply`` makes them, once per process, before the app is built, and only on the Faust
stack they were written for (``streams.kafka.compat``).
"""
from __future__ import annotations

from streams.kafka import compat
from streams.kafka.patches.batching import fetch_with_short_holds
from streams.kafka.patches.correctness import (assign_after_full_metadata, crash_on_coordinator_errors,
                                               drain_producer_buffer_on_flush, resume_after_seek,
                                               rewind_uncommitted_partitions)
from streams.kafka.patches.throughput import (deliver_inline, events_without_settings_reads,
                                              cache_producer_buffer_size, streams_take_turns_every)


def apply(settings) -> None:
    """Every patch, once the installed Faust stack is known to be the one they were written for
    (``streams.kafka.compat``: a mismatch stops here unless MMSR_ALLOW_UNTESTED_FAUST=1)."""
    compat.check(getattr(settings, "allow_untested_faust", False))
    streams_take_turns_every(settings.loop_turn_every)
    drain_producer_buffer_on_flush()
    deliver_inline()
    fetch_with_short_holds(settings.fetch_wait_ms)
    cache_producer_buffer_size()
    events_without_settings_reads()
    assign_after_full_metadata()
    crash_on_coordinator_errors()
    resume_after_seek()
    rewind_uncommitted_partitions()
