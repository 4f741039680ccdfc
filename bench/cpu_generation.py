"""Summary tokens/s on the CPU with the model that ships: eager decoding against the static KV cache,
eager and compiled, at the batch sizes the llm role runs, in one process.

The GPU script (``bench/gpu_generation.py``) measures real-size architectures and needs a GPU; this
one runs where the suite runs, so the compiled decoding path is timed even when no GPU is lent. A
summary prompt is 320 tokens (previous summary and three items) and every sequence generates
exactly ``--new-tokens`` tokens. The first call at each shape includes compiling (reported apart);
the served speed is the median of ``--repeats`` calls after it, the decodings alternated.
"""
from __future__ import annotations

import argparse
import atexit
import os
import shutil
import statistics
import tempfile

# a compile cache of this run's own: the first calls time a cold compile, as right after a deploy
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="mmsr-inductor-"))
atexit.register(shutil.rmtree, os.environ["TORCHINDUCTOR_CACHE_DIR"], ignore_errors=True)

import torch  # noqa: E402  (after the cache directory is chosen)

from bench import write_result  # noqa: E402
from bench.gpu_generation import DECODINGS, run, summary_inputs  # noqa: E402
from models.registry import load  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m-instruct", help="registry name, hub id or path")
    parser.add_argument("--batches", default="1,4,16")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=320)
    parser.add_argument("--repeats", type=int, default=3, help="alternated timed calls per decoding (median)")
    parser.add_argument("--decodings", default="dynamic,static-eager,static-compiled,static-compiled-1024",
                        help=f"compared in the same run, of {sorted(DECODINGS)}")
    parser.add_argument("--out", default="bench/results/cpu_generation.json")
    args = parser.parse_args()

    device = torch.device("cpu")
    lm = load(args.model, device="cpu", dtype="float32")
    run(lm.model, summary_inputs(1, device, 16), 2, device)  # warm-up
    names = args.decodings.split(",")

    def timed(name: str, inputs: dict) -> float:
        # transformers sizes a static cache to the longest any earlier call had: each call starts afresh
        lm.model._previous_max_cache_length = -1
        return run(lm.model, inputs, args.new_tokens, device, DECODINGS[name])

    rows = []
    for batch in (int(b) for b in args.batches.split(",")):
        inputs = summary_inputs(batch, device, args.prompt_tokens)
        first = {name: timed(name, inputs) for name in names}  # compiles, for the compiled ones
        served = {name: [] for name in names}
        for _ in range(args.repeats):  # alternated, so a slower moment of the machine hits them all
            for name in names:
                served[name].append(timed(name, inputs))
        for name in names:
            seconds = statistics.median(served[name])
            rows.append({"decoding": name, "batch": batch, "first_call_s": round(first[name], 2),
                         "summary_tokens_per_s": round(batch * args.new_tokens / seconds, 1),
                         "summaries_per_s": round(batch / seconds, 3)})
            print(rows[-1], flush=True)
    baseline = {r["batch"]: r["summary_tokens_per_s"] for r in rows if r["decoding"] == "dynamic"}
    for r in rows:
        if r["batch"] in baseline:
            r["tokens_per_s_vs_dynamic"] = round(r["summary_tokens_per_s"] / baseline[r["batch"]], 2)
    write_result(args.out, {
        "benchmark": "summary generation on the CPU: dynamic cache against the static cache, eager and compiled",
        "model": args.model, "parameters": sum(p.numel() for p in lm.model.parameters()), "dtype": "float32",
        "cpu_threads": torch.get_num_threads(), "cpus": os.cpu_count(), "torch": torch.__version__,
        "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens, "rows": rows})


if __name__ == "__main__":
    main()
