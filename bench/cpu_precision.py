"""Summary decoding on the CPU by precision: fp32 (the default), bf16, and int8 dynamic quantization.

The summarizer's cost on a CPU is decoding, and a larger model writes better summaries
(``bench/summary_quality.py``), so the cheaper paths are measured on the model the summarizer
serves: the same real prompts (first blocks of MovieLens-100K users, rendered by the summarizer's
own prompt builder), batched as the worker batches, every sequence forced to generate exactly
``--new-tokens`` tokens. The decodings are alternated and the median of ``--repeats`` calls is
reported, with the ratio to fp32 and how many greedy summaries each writes word for word as fp32
does (a cheaper path that changes the text is judged by the quality benchmark, not by this one).

    python -m bench.cpu_precision --model qwen2.5-coder-0.5b-instruct
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from bench import first_blocks, write_result
from models.llm import prompts
from models.llm.generation import render
from models.registry import load
from models.llm.user_summarizer import BlockRequest, SummarizerConfig, UserSummarizer

PRECISIONS = ("float32", "bfloat16", "int8-dynamic")


def loaded(name: str, precision: str):
    if precision == "int8-dynamic":
        lm = load(name, device="cpu", dtype="float32")
        lm.model = torch.ao.quantization.quantize_dynamic(lm.model, {torch.nn.Linear}, dtype=torch.qint8)
        return lm
    return load(name, device="cpu", dtype=precision)


@torch.inference_mode()
def timed_call(lm, rendered: list[str], new_tokens: int) -> float:
    enc = lm.tokenizer(rendered, return_tensors="pt", padding=True, add_special_tokens=False)
    start = time.perf_counter()
    lm.model.generate(**enc, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                      pad_token_id=lm.tokenizer.pad_token_id)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    parser.add_argument("--batch", type=int, default=16, help="summaries per call (MMSR_SUMMARY_BATCH)")
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precisions", default=",".join(PRECISIONS))
    parser.add_argument("--out", default="bench/results/cpu_precision.json")
    args = parser.parse_args()

    names = args.precisions.split(",")
    models = {p: loaded(args.model, p) for p in names}
    requests = [BlockRequest(None, block) for block in first_blocks(args.batch, 3)]
    summarizers = {p: UserSummarizer(lm, SummarizerConfig(max_new_tokens=args.new_tokens, batch_size=args.batch))
                   for p, lm in models.items()}
    some = summarizers[names[0]]
    rendered = [render(some.lm, some.messages(r), prompts.SUMMARY_PREFIX) for r in requests]
    for p in names:  # warm-up: kernels, allocator
        timed_call(models[p], rendered[:2], 4)
    times = {p: [] for p in names}
    for _ in range(args.repeats):
        for p in names:
            times[p].append(timed_call(models[p], rendered, args.new_tokens))
    texts = {p: s.update(requests) for p, s in summarizers.items()}
    rows = []
    for p in names:
        seconds = statistics.median(times[p])
        rows.append({"precision": p, "batch": args.batch, "seconds_per_call": round(seconds, 2),
                     "generated_tokens_per_s": round(args.batch * args.new_tokens / seconds, 1),
                     "seconds_per_summary": round(seconds / args.batch, 3),
                     "same_summary_as_float32": sum(a == b for a, b in zip(texts[p], texts[names[0]])),
                     "example": texts[p][0]})
        print(rows[-1], flush=True)
    base = rows[0]["generated_tokens_per_s"]
    for r in rows:
        r["tokens_per_s_vs_float32"] = round(r["generated_tokens_per_s"] / base, 2)
    write_result(args.out, {
        "benchmark": "summary decoding on the CPU by precision (eager, dynamic cache), same prompts, same run",
        "model": args.model, "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "new_tokens": args.new_tokens, "prompt_tokens_max": max(
            len(models[names[0]].tokenizer(r, add_special_tokens=False)["input_ids"]) for r in rendered),
        "rows": rows})


if __name__ == "__main__":
    main()
