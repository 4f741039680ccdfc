"""p(Yes) scoring on a GPU at a real vision-language size: shared-prefix batched vs naive loop.

A LLaVA-1.5-7B architecture (CLIP ViT-L/14-336 + a Llama-2-7B-shaped language model) with random
bf16 weights, built from configs (no download). The tokenizer is SmolLM2's plus ``<image>`` (no
Llama tokenizer ships offline), so the vocabulary is 49,153 instead of 32,064. Each user has a
preference paragraph and 50 candidates, each with its own 336x336 image (576 image tokens) and a
text part; users are batched. The scoring code is the product's (``models.llm.recommender``),
processor included.

Model FLOPs per pass: 2 x (language-model parameters) per text token, plus 2 x (vision tower
and projector parameters) per image patch token, plus attention (4 x layers x hidden x query
tokens x attended tokens); MFU = FLOPs / seconds / the card's dense bf16 peak.
``--tiny`` runs the same code at toy shapes on any device (a smoke run, no figure to report).
``--collab`` also times both scorers with collaborative tokens (a random SASRec-sized item table
and projector) against the text-only rates of the same run.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from PIL import Image

from bench.gpu_generation import llava_config
from bench.scoring import PARAGRAPH
from models import registry
from models.llm import prompts
from models.llm.recommender import Recommender, ScorerConfig, split_prompt
from models.llm.requests import Candidate, ScoreRequest
from bench import write_result

PEAK_BF16_DENSE = {"H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12}


def peak_flops(name: str) -> float | None:
    for key in sorted(PEAK_BF16_DENSE, key=len, reverse=True):
        if key in name:
            return PEAK_BF16_DENSE[key]
    return None


def build_lm(tiny: bool, device, dtype, tokenizer_dir: str | None = None) -> registry.LoadedModel:
    from transformers import AutoTokenizer, CLIPImageProcessor, LlavaForConditionalGeneration, LlavaProcessor

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir or registry.smollm2_dir())
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    tokenizer.padding_side = "left"
    config = llava_config(tiny)
    config.text_config.vocab_size = len(tokenizer)
    config.image_token_index = config.image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    config.text_config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(0)
    with torch.device(device):
        model = LlavaForConditionalGeneration._from_config(config, dtype=dtype).eval()
    v = config.vision_config
    image_processor = CLIPImageProcessor(size={"shortest_edge": v.image_size},
                                         crop_size={"height": v.image_size, "width": v.image_size})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=v.patch_size,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=registry.CHATML_WITH_IMAGES)
    return registry.LoadedModel("llava-1.5-7b-shape-random", "", model, tokenizer, processor, device, dtype)


def build_requests(users: int, candidates: int, image_size: int) -> list[ScoreRequest]:
    rng = np.random.default_rng(0)
    out = []
    for u in range(users):
        cands = [Candidate(f"{u}-{c}", f"Candidate film {c} ({1980 + c % 20})", ["Drama", "Comedy"][:1 + c % 2],
                           caption="A bright poster with two figures against a city skyline at dusk, bold red title.",
                           image=Image.fromarray(rng.integers(0, 255, (image_size, image_size, 3), dtype=np.uint8)))
                 for c in range(candidates)]
        history = tuple(f"h{(u * 7 + j) % 200}" for j in range(20))
        out.append(ScoreRequest(prompts.user_preferences(PARAGRAPH.format(a="drama", b="crime")), cands, history))
    return out


def model_flops(lm, requests, shared: bool) -> float:
    """Forward FLOPs of one scoring pass over ``requests`` (shared: prefixes once per user)."""
    model = lm.model
    text = model.config.text_config
    # matmul parameters: the input embedding is a lookup, not FLOPs; the output head runs on the
    # last position only (logits_to_keep=1), so it is left out too
    lm_params = sum(p.numel() for n, p in model.named_parameters()
                    if "language_model" in n and "embed_tokens" not in n)
    vision_params = sum(p.numel() for n, p in model.named_parameters()
                        if "vision_tower" in n or "multi_modal_projector" in n)
    v = model.config.vision_config
    patches = (v.image_size // v.patch_size) ** 2 + 1
    flops = 0.0
    for r in requests:
        heads, tails = [], []
        for c in r.candidates:
            head, tail, _ = split_prompt(lm, r.user_part, c, 600)
            heads.append(len(lm.tokenizer(head, add_special_tokens=False)["input_ids"]))
            tail_text = tail.replace("<image>", "<image>" * (patches - 1))
            tails.append(len(lm.tokenizer(tail_text, add_special_tokens=False)["input_ids"]))
        prefix_runs = [heads[0]] if shared else heads
        tokens = sum(prefix_runs) + sum(tails)
        attention = 4 * text.num_hidden_layers * text.hidden_size * (
            sum(p * p / 2 for p in prefix_runs) + sum(t * (h + t / 2) for h, t in zip(heads, tails)))
        flops += 2 * lm_params * tokens + attention + 2 * vision_params * patches * len(r.candidates)
    return flops


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--candidates", type=int, default=50)
    parser.add_argument("--users-per-batch", type=int, default=8)
    parser.add_argument("--rows-per-batch", type=int, default=64)
    parser.add_argument("--naive-users", type=int, default=4, help="users timed in the naive loop (it is slow)")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--tokenizer", help="a directory holding SmolLM2's tokenizer files; default: the packaged "
                                            "model's (a GPU machine without the package needs only these files)")
    parser.add_argument("--collab", action="store_true", help="also time scoring with collaborative tokens")
    parser.add_argument("--out", default="bench/results/gpu_scoring.json")
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    lm = build_lm(args.tiny, device, dtype, args.tokenizer)
    size = lm.model.config.vision_config.image_size
    recommender = Recommender(lm, ScorerConfig(users_per_batch=args.users_per_batch,
                                               rows_per_batch=args.rows_per_batch))
    requests = build_requests(args.users, args.candidates, size)
    recommender.score(requests[:1])  # warm-up: kernels, allocator
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    shared, t_shared = timed(lambda: recommender.score(requests), device)
    naive_requests = requests[:args.naive_users]
    naive, t_naive = timed(lambda: recommender.score_naive(naive_requests), device)
    n_shared = sum(len(r.candidates) for r in requests)
    n_naive = sum(len(r.candidates) for r in naive_requests)
    shared_rate, naive_rate = n_shared / t_shared, n_naive / t_naive
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    peak = peak_flops(name) if device.type == "cuda" else None
    flops = model_flops(lm, requests, shared=True)
    naive_flops = model_flops(lm, naive_requests, shared=False)
    worst = max(abs(a - b) for ra, rb in zip(shared, naive) for a, b in zip(ra, rb))
    result = {
        "benchmark": "p(Yes) scoring, real-size VLM with random weights: shared-prefix batched vs naive loop",
        "architecture": "llava-1.5-7b (CLIP ViT-L/14-336 + Llama-2-7B shape), SmolLM2 tokenizer",
        "device": name, "dtype": str(dtype).removeprefix("torch."), "tiny": args.tiny,
        "parameters": sum(p.numel() for p in lm.model.parameters()),
        "users": args.users, "candidates_per_user": args.candidates, "users_per_batch": args.users_per_batch,
        "rows_per_batch": args.rows_per_batch, "naive_users": args.naive_users,
        "shared_prefix_candidates_per_s": round(shared_rate, 2), "naive_candidates_per_s": round(naive_rate, 2),
        "speedup": round(shared_rate / naive_rate, 2),
        "shared_tflops_per_s": round(flops / t_shared / 1e12, 2),
        "naive_tflops_per_s": round(naive_flops / t_naive / 1e12, 2),
        "peak_bf16_dense_tflops": peak and peak / 1e12,
        "mfu_shared": peak and round(flops / t_shared / peak, 4),
        "mfu_naive": peak and round(naive_flops / t_naive / peak, 4),
        "max_abs_score_difference_bf16": worst,
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1) if device.type == "cuda" else None,
    }
    if args.collab:
        from bench.scoring import random_collab

        items = [i for r in requests for i in (*r.history, *(c.item_id for c in r.candidates))]
        with_tokens = Recommender(lm, recommender.config, collab=random_collab(lm, items))
        with_tokens.score(requests[:1])
        collab_shared, t_collab = timed(lambda: with_tokens.score(requests), device)
        collab_naive, t_collab_naive = timed(lambda: with_tokens.score_naive(naive_requests), device)
        result["collab_tokens"] = {
            "shared_prefix_candidates_per_s": round(n_shared / t_collab, 2),
            "naive_candidates_per_s": round(n_naive / t_collab_naive, 2),
            "shared_rate_vs_text_only": round(t_shared / t_collab, 3),
            "max_abs_score_difference_bf16": max(abs(a - b) for ra, rb in zip(collab_shared, collab_naive)
                                                 for a, b in zip(ra, rb))}
    write_result(args.out, result)


if __name__ == "__main__":
    main()
