"""How long the llm role's first summaries wait after a start, with compiled decoding, with and
without the warm-up (``MMSR_GENERATION_WARM_UP``), against eager decoding in the same run.

Each scenario runs in a process of its own with an empty compile cache, as right after a deploy:
load the model, warm up (or not), then serve a fixed sequence of summary requests of several
batch sizes (first blocks of MovieLens-100K users) through ``UserSummarizer.update``, the llm
role's call. Reported per scenario: when the worker would join its group (model loaded and
warmed), each request's latency, and when the first and the last request were answered, counted
from the start of the process.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

SCENARIOS = {  # name: (kv_cache, compile, cache length, warm up)
    "eager": ("dynamic", "never", 0, False),
    "compiled": ("static", "always", 0, False),
    "compiled+warm-up": ("static", "always", 0, True),
    # a cache length that fits these requests (prompts under 300 tokens, 64 new): what docs/benchmarks.md advises
    "compiled+warm-up+cache-512": ("static", "always", 512, True),
}


def requests_of(users: int, block: int) -> list:
    """``users`` block updates: the first blocks of MovieLens-100K's first users, and for every other
    user a previous summary to refine (a fixed sentence: its length, not its wording, is what the
    timing depends on)."""
    from bench import first_blocks
    from models.llm.prompts import SUMMARY_PREFIX
    from models.llm.user_summarizer import BlockRequest

    previous = (f"{SUMMARY_PREFIX} crime and drama films of the mid-nineties with strong casts, and not for "
                "long war epics.")
    return [BlockRequest(None if n % 2 else previous, items) for n, items in enumerate(first_blocks(users, block))]


def scenario(name: str, args) -> dict:
    """One start of the llm role's summarizer (in this process)."""
    sizes = [int(n) for n in args.requests.split(",")]
    from models.llm.pipeline import TEXT  # no torch import: the clock below starts before it

    pending = requests_of(sum(sizes), TEXT.block_size)  # these arrive from Kafka: built before the clock
    started = time.perf_counter()
    import torch

    from models.llm.generation import Decoding
    from models.registry import load
    from models.llm.user_summarizer import SummarizerConfig, UserSummarizer

    kv_cache, compile_mode, cache_len, warm = SCENARIOS[name]
    lm = load(args.model, device=args.device, dtype=args.dtype)
    loaded = time.perf_counter() - started
    summarizer = UserSummarizer(lm, SummarizerConfig(max_new_tokens=args.new_tokens, batch_size=args.batch,
                                                     decoding=Decoding(kv_cache=kv_cache, compile=compile_mode,
                                                                       cache_len=cache_len)))
    warm_calls = summarizer.warm_up() if warm else 0
    ready = time.perf_counter() - started
    latencies, first_user = [], 0
    for users in sizes:
        at = time.perf_counter()
        summaries = summarizer.update(pending[first_user:first_user + users])
        if args.device == "cuda":
            torch.cuda.synchronize()
        latencies.append(round(time.perf_counter() - at, 2))
        assert len(summaries) == users and all(summaries)
        first_user += users
    answered = time.perf_counter() - started
    return {"scenario": name, "load_s": round(loaded, 2), "warm_up_calls": warm_calls,
            "warm_up_s": round(ready - loaded, 2), "ready_s": round(ready, 2),
            "first_answered_s": round(ready + latencies[0], 2), "request_latency_s": latencies,
            "all_answered_s": round(answered, 2)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m-instruct", help="registry name, hub id or path")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batch", type=int, default=16, help="users per summarizer call (MMSR_SUMMARY_BATCH)")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--requests", default="3,16,1,8,16,5", help="users per request, in arrival order")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--one", help=argparse.SUPPRESS)  # run one scenario in this process, print its JSON
    parser.add_argument("--out", default="bench/results/warm_up.json")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(scenario(args.one, args)))
        return

    rows = []
    for name in args.scenarios.split(","):
        with tempfile.TemporaryDirectory(prefix="mmsr-inductor-") as cache:  # a cold compile cache for each
            argv = ["--model", args.model, "--device", args.device, "--dtype", args.dtype, "--batch", str(args.batch),
                    "--new-tokens", str(args.new_tokens), "--requests", args.requests, "--one", name]
            done = subprocess.run([sys.executable, "-m", "bench.warm_up", *argv], check=True,
                                  capture_output=True, text=True, env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache})
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    by_name = {r["scenario"]: r for r in rows}
    ratios = {}
    if {"compiled", "compiled+warm-up"} <= by_name.keys():
        cold, warm = by_name["compiled"], by_name["compiled+warm-up"]
        ratios = {"first_request_latency_cold_over_warm": round(cold["request_latency_s"][0] /
                                                                warm["request_latency_s"][0], 2),
                  "all_answered_cold_over_warm": round(cold["all_answered_s"] / warm["all_answered_s"], 2)}
    import torch

    from bench import write_result

    write_result(args.out, {
        "benchmark": "time to the first summaries after a start: compiled decoding with and without the warm-up",
        "model": args.model, "device": args.device, "dtype": args.dtype, "cpus": os.cpu_count(),
        "torch": torch.__version__, "batch": args.batch, "new_tokens": args.new_tokens,
        "requests_users": [int(n) for n in args.requests.split(",")], "rows": rows, **ratios})


if __name__ == "__main__":
    main()
