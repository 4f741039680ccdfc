"""Process tuning for a worker that folds interactions at full speed: the cyclic GC and glibc's malloc."""
from __future__ import annotations

import sys


def collect_garbage_for_throughput() -> None:
    """Fewer, cheaper cyclic-GC passes. Ingest allocates a few dicts per increment (tens per
    interaction); at the default threshold (700 allocations) the collector ran every few events
    and walked the young heap each time, and the profile charged a fifth of the worker to the
    line that builds increments. The models and libraries loaded so far are frozen out of the
    collector's walks; what is freed by reference counting (nearly everything here) is unaffected."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def keep_freed_memory(megabytes: int) -> bool:
    """Let glibc's malloc keep up to ``megabytes`` of freed heap for reuse, and serve blocks
    under 16 MB from the heap. With glibc's defaults, the top of the heap was handed back to the
    kernel whenever 128 KB of it was free, and blocks over 128 KB to 32 MB were mapped and unmapped
    one by one; the fold's buffers (JSON records of some 10 KB, batches of them) were then written
    into freshly mapped pages, each zeroed by the kernel first: ``perf`` charged 7% of an ingest
    worker's CPU to zeroing pages (kernel 14% of samples, then 6.5%), and one worker folded 3%
    more per second (``bench/ingest.py``). Returns whether the settings took (glibc only; 0 keeps
    glibc's defaults)."""
    if megabytes <= 0 or not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # another C library (musl): its allocator, its defaults
        return False
    trim_threshold, top_pad, mmap_threshold = -1, -2, -3  # malloc.h's M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD
    kept = megabytes << 20  # at most 1,024 (the setting's bound): mallopt takes a C int
    return all(mallopt(option, value) == 1 for option, value in (
        (mmap_threshold, min(16 << 20, kept)), (trim_threshold, kept), (top_pad, min(64 << 20, kept))))
