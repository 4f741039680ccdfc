"""LoRA training steps per second on the CPU: the answer-position loss against the full-logits loss.

Same model (SmolLM2-135M fp32 with a fresh r=16 adapter), same batch of examples, same process.
The baseline is the usual causal-LM loss over prompt + answer with the labels masked to the answer
token, which computes vocabulary-sized logits at every position; ``models.llm.training`` computes
them at the answer position only. Both losses are the same number (recorded), so the figure that
matters is the step-time ratio. The two are timed in alternation to share the machine's drift.
"""
from __future__ import annotations

import argparse
import os
import platform
import random
import time

import torch

from bench.scoring import PARAGRAPH
from models import registry
from models.llm import prompts
from models.data import movielens
from models.llm.recommender import yes_no_ids
from models.llm.requests import Candidate
from models.llm.training import Example, LoraSettings, answer_loss, attach_lora, collate, encode_example
from bench import write_result

CAPTION = ("A character-driven film with a strong ensemble cast, sharp dialogue and a story that balances humour "
           "with real emotional stakes.")


def examples(n: int, seed: int = 0) -> list[Example]:
    rng = random.Random(seed)
    items = rng.sample(list(movielens.items()), n)
    part = prompts.user_preferences(PARAGRAPH.format(a="drama", b="comedy"))
    return [Example(part, Candidate(i["item_id"], i["title"], i["categories"], caption=CAPTION), k % 2 == 0)
            for k, i in enumerate(items)]


def full_logits_batch(batch: dict, pad_id: int) -> dict:
    """The same rows right padded with the answer token appended, labels on the answer alone."""
    rows = [ids[mask.bool()].tolist() + [target] for ids, mask, target in
            zip(batch["input_ids"], batch["attention_mask"], batch["targets"].tolist())]
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    mask = torch.zeros_like(ids)
    for r, row in enumerate(rows):
        ids[r, :len(row)], mask[r, :len(row)], labels[r, len(row) - 1] = torch.tensor(row), 1, row[-1]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def step_seconds(model, loss_fn, steps: int) -> list[float]:
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        loss_fn().backward()
        model.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds of --steps steps per method")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--note", default="", help="recorded with the figures (e.g. what else ran on the machine)")
    parser.add_argument("--out", default="bench/results/training.json")
    args = parser.parse_args()

    lm = registry.load(registry.SMOLLM2, device="cpu", dtype="float32")
    model = attach_lora(lm, LoraSettings())
    model.train()
    yes_no = yes_no_ids(lm.tokenizer)
    batch = collate([encode_example(lm, yes_no, e, 600) for e in examples(args.batch_size)], lm.tokenizer.pad_token_id)
    baseline = full_logits_batch(batch, lm.tokenizer.pad_token_id)
    methods = {"answer_position": lambda: answer_loss(model, batch),
               "full_logits": lambda: model(**baseline).loss}
    model.eval()  # the two losses compared without LoRA dropout
    with torch.no_grad():
        losses = {name: float(fn()) for name, fn in methods.items()}
    model.train()
    step_seconds(model, methods["answer_position"], 1)  # warm-up, not timed
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(args.rounds):
        for name, fn in methods.items():
            times[name] += step_seconds(model, fn, args.steps)
    vocab = model.get_output_embeddings().weight.shape[0]
    width = baseline["input_ids"].shape[1]
    median = {name: sorted(t)[len(t) // 2] for name, t in times.items()}
    result = {
        "benchmark": "LoRA training step (forward + backward): loss at the answer position vs full logits",
        "model": registry.SMOLLM2, "device": "cpu", "dtype": "float32", "note": args.note,
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "python": platform.python_version(), "torch": torch.__version__},
        "batch_size": args.batch_size,
        "tokens_per_row_mean": round(float(batch["attention_mask"].sum(-1).float().mean()), 1),
        "steps_timed_per_method": len(times["full_logits"]),
        "median_step_s": {name: round(v, 3) for name, v in median.items()},
        "examples_per_s": {name: round(args.batch_size / v, 2) for name, v in median.items()},
        "speedup": round(median["full_logits"] / median["answer_position"], 2),
        "logits_bytes_per_batch": {"answer_position": args.batch_size * vocab * 4,
                                   "full_logits": args.batch_size * width * vocab * 4},
        "loss": losses, "loss_difference": abs(losses["answer_position"] - losses["full_logits"]),
    }
    write_result(args.out, result)


if __name__ == "__main__":
    main()
