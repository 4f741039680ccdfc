"""The worker's threads: a bounded pool per kind of blocking work, and table reads that survive
the loop changing Faust's dict of partition databases under them."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from streams.settings import Settings


def thread_pools(settings: Settings) -> dict[str, ThreadPoolExecutor]:
    """Bounded executors, one per kind of blocking work, so none waits behind another: a list is
    not held up by a seconds-long generation, nor a model call by a 30 s broker read. (All of it
    shared asyncio's default executor: 6 threads on 2 cores.)"""
    return {
        "models": ThreadPoolExecutor(settings.model_threads, "mmsr-models"),  # embed, caption, summarize, score, load
        "lists": ThreadPoolExecutor(1, "mmsr-lists"),  # the candidate stage
        "scans": ThreadPoolExecutor(1, "mmsr-scans"),  # table scans, index rebuilds, trending ranks
        "broker": ThreadPoolExecutor(2, "mmsr-broker"),  # the offset guard's blocking reads
    }


CONCURRENT_CHANGE = ("changed size during iteration", "mutated during iteration")


def read_concurrently(fn, *args, attempts: int = 5):
    """``fn(*args)``, again if a dict it iterates changed meanwhile. Faust's RocksDB store walks
    its dict of partition databases on every global-table read and scan, and the loop adds to
    that dict when it opens a partition's database; a read from another thread that meets it
    raises RuntimeError and is simply made again (the loop opens databases rarely)."""
    for attempt in range(attempts):
        try:
            return fn(*args)
        except RuntimeError as exc:
            if attempt == attempts - 1 or not any(text in str(exc) for text in CONCURRENT_CHANGE):
                raise
