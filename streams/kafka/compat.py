"""The Faust stack the worker's patches were written for, checked before any patch is made.

``streams.kafka.patches`` replaces private methods of faust-streaming, mode-streaming and
aiokafka, and ``continuity`` and ``flow`` read their private attributes. Some of those patches
are what makes the worker lose no event and apply none twice (the producer-buffer flush, the
seek and resume at the end of a recovery, the rewind of partitions without a commit, the
metadata wait and the coordinator errors). A release that renames one of them would undo the
patch without a word, so the worker starts only on the versions below, with every target in
place, unless ``MMSR_ALLOW_UNTESTED_FAUST=1`` says to go on (with a warning naming each
difference). ``pyproject.toml`` pins the same versions and ``constraints.txt`` the rest of
what CI tested; ``tests/unit/test_compat.py`` holds the three to each other.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import logging

log = logging.getLogger(__name__)

# the distributions whose internals the worker patches or reads, at the versions it was tested on
TESTED_VERSIONS = {
    "faust-streaming": "0.15.3",
    "mode-streaming": "0.7.1",
    "aiokafka": "0.14.0",
}

# every attribute a patch replaces or wraps (module, attribute path), by purpose
PATCH_TARGETS = {
    "correctness": [
        ("faust.transport.producer", "ProducerBuffer.flush"),  # drain_producer_buffer_on_flush
        ("faust.tables.recovery", "Recovery.on_recovery_completed"),  # resume_after_seek
        ("faust.tables.recovery", "Recovery._resume_streams"),
        ("faust.transport.drivers.aiokafka", "AIOKafkaConsumerThread.seek_to_committed"),  # rewind_partitions_...
        ("faust.transport.drivers.aiokafka", "AIOKafkaConsumerThread._ensure_consumer"),
        ("faust.transport.drivers.aiokafka", "AIOKafkaConsumerThread.call_thread"),
        ("aiokafka.consumer.group_coordinator", "GroupCoordinator._perform_assignment"),  # assign_once_the_...
        ("aiokafka.consumer.group_coordinator", "GroupCoordinator._push_error_to_user"),  # crash_on_coordinator_...
        ("faust.transport.drivers.aiokafka", "AIOKafkaConsumerThread.on_start"),
    ],
    "throughput": [
        ("faust.app.base", "App.create_event"),  # events_without_settings_reads
        ("faust.transport.producer", "ProducerBuffer.size"),  # cache_producer_buffer_size
        ("faust.transport.consumer", "Consumer.wait_first"),  # deliver_inline
        ("mode.services", "WaitResults"),
        ("faust._cython.streams", "sleep"),  # streams_take_turns_every (the compiled stream iterator)
        ("faust.sensors.monitor", "Monitor.on_message_in"),  # QuietMonitor
    ],
    "batching": [
        ("faust.transport.drivers.aiokafka", "AIOKafkaConsumerThread._create_worker_consumer"),  # fetch_with_...
        ("mode.utils.futures", "notify"),  # take_events_until_quiet
    ],
}


class UntestedFaustStack(RuntimeError):
    """The installed Faust stack is not the one the worker's patches were written for."""


def differences() -> list[str]:
    """One line per installed version that differs from the tested one, and per patch target missing."""
    found = []
    for dist, tested in TESTED_VERSIONS.items():
        try:
            installed = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            installed = None
        if installed != tested:
            found.append(f"{dist} {installed or 'not installed'} is installed; the worker's patches were written "
                         f"for {tested}")
    for purpose, targets in PATCH_TARGETS.items():
        for module, path in targets:
            if not has_target(module, path):
                found.append(f"{module}.{path}, which a {purpose} patch replaces, does not exist")
    return found


def has_target(module: str, path: str) -> bool:
    try:
        node = importlib.import_module(module)
    except ImportError:
        return False
    for name in path.split("."):
        if not hasattr(node, name):
            return False
        node = getattr(node, name)
    return True


def check(allow_untested: bool = False) -> list[str]:
    """Raise UntestedFaustStack with the first difference (one line), or warn about each when allowed."""
    found = differences()
    if found and not allow_untested:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise UntestedFaustStack(f"{found[0]}{more}; install the pinned versions (make setup) or set "
                                 "MMSR_ALLOW_UNTESTED_FAUST=1 to run anyway")
    for line in found:
        log.warning("MMSR_ALLOW_UNTESTED_FAUST: %s", line)
    return found
