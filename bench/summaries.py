"""Captions/s and summaries/s on the CPU with SmolLM2-135M: batched against one at a time.

Both runs use the same inputs (MovieLens-100K items and the first block of its first users), the
same model and the same greedy settings, in the same process; the figure that matters is the
ratio. Generated tokens are counted from the outputs, so early stops are accounted for.
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from models import registry
from models.data import movielens
from models.llm.captioner import CaptionConfig, ItemInput, Captioner
from models.llm.user_summarizer import BlockRequest, SummarizerConfig, UserSummarizer
from bench import first_blocks, write_result


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def tokens(lm, texts: list[str]) -> int:
    return sum(len(lm.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)


def compare(lm, run, inputs, batch_size: int) -> dict:
    """``run`` over all inputs (batched inside) against ``run`` on one input at a time."""
    batched, t_batch = timed(run, inputs)
    singles, t_single = timed(lambda xs: [run([x])[0] for x in xs], inputs)
    n = len(inputs)
    return {
        "inputs": n, "batch_size": batch_size,
        "batched_per_s": round(n / t_batch, 3), "one_at_a_time_per_s": round(n / t_single, 3),
        "speedup": round(t_single / t_batch, 2),
        "batched_generated_tokens_per_s": round(tokens(lm, batched) / t_batch, 1),
        "identical_outputs": sum(a == b for a, b in zip(batched, singles)),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=16)
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--caption-tokens", type=int, default=48)
    parser.add_argument("--summary-tokens", type=int, default=48)
    parser.add_argument("--out", default="bench/results/summaries.json")
    args = parser.parse_args()

    lm = registry.load(registry.SMOLLM2, device="cpu")
    catalog = list(movielens.items())

    captioner = Captioner(lm, CaptionConfig(max_new_tokens=args.caption_tokens, batch_size=args.batch_size))
    items = [ItemInput(i["item_id"], i["title"], i["categories"]) for i in catalog[:args.items]]
    caption = compare(lm, lambda xs: [c.text for c in captioner.caption(xs)], items, args.batch_size)

    requests = [BlockRequest(None, block) for block in first_blocks(args.users, 3)]
    summarizer = UserSummarizer(lm, SummarizerConfig(max_new_tokens=args.summary_tokens, batch_size=args.batch_size))
    summary = compare(lm, summarizer.update, requests, args.batch_size)

    result = {
        "benchmark": "captions and summaries, batched vs one at a time",
        "model": registry.SMOLLM2, "device": "cpu", "dtype": "float32",
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "python": platform.python_version(), "torch": torch.__version__},
        "captions": {**caption, "max_new_tokens": args.caption_tokens},
        "summaries": {**summary, "max_new_tokens": args.summary_tokens},
    }
    write_result(args.out, result)


if __name__ == "__main__":
    main()
