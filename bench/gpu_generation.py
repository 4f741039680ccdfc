"""Captions/s, summaries/s and generated tokens/s for real-size vision-language architectures.

Random weights in bf16 built from configs (no download): LLaVA-1.5-7B (CLIP ViT-L/14-336 and a
Llama-2-7B language model) and Qwen2-VL-2B. A caption is one image (576 image tokens for LLaVA,
256 patches merged to 64 tokens for Qwen2-VL) plus a 64-token prompt; a summary is a 320-token
text prompt (previous summary and three items). Every sequence generates exactly
``--new-tokens`` tokens (``min_new_tokens``), since random weights would stop anywhere.

``--tiny`` shrinks both architectures to run the same code on a CPU in seconds (a smoke run,
not a figure to report).
"""
from __future__ import annotations

import argparse
import time

import torch
from bench import write_result
from models.llm.generation import Decoding

# the decodings a run can compare, by name: 'static' compiles where transformers does (CUDA)
DECODINGS = {"dynamic": Decoding(), "static": Decoding(kv_cache="static"),
             "static-compiled": Decoding(kv_cache="static", compile="always"),
             "static-eager": Decoding(kv_cache="static", compile="never"),
             # one cache length for every call: one shape, but each step attends over all 1,024 slots
             "static-compiled-1024": Decoding(kv_cache="static", compile="always", cache_len=1024)}


PER_S = {"caption": "captions_per_s", "summary": "summaries_per_s"}


def llava_config(tiny: bool):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    if tiny:
        vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                  image_size=56, patch_size=14, projection_dim=32)
        text = LlamaConfig(vocab_size=32064, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=4)
    else:
        vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                  num_attention_heads=16, image_size=336, patch_size=14, projection_dim=768)
        text = LlamaConfig(vocab_size=32064, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                           num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096)
    return LlavaConfig(vision_config=vision, text_config=text, image_token_index=32000,
                       vision_feature_select_strategy="default", vision_feature_layer=-2)


def qwen2vl_config(tiny: bool):
    from transformers import Qwen2VLConfig

    if tiny:
        text = dict(vocab_size=151936, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]})
        vision = dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2)
    else:
        text = dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                    num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768,
                    rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]})
        vision = dict(depth=32, embed_dim=1280, hidden_size=1536, num_heads=16, mlp_ratio=4)
    return Qwen2VLConfig(text_config=text, vision_config=vision)


def build(kind: str, tiny: bool, device, dtype):
    from transformers import LlavaForConditionalGeneration, Qwen2VLForConditionalGeneration

    torch.manual_seed(0)
    config = llava_config(tiny) if kind == "llava-1.5-7b" else qwen2vl_config(tiny)
    cls = LlavaForConditionalGeneration if kind == "llava-1.5-7b" else Qwen2VLForConditionalGeneration
    with torch.device(device):
        model = cls._from_config(config, dtype=dtype)
    return model.eval()


def caption_inputs(kind: str, model, batch: int, device, dtype, prompt_tokens: int = 64) -> dict:
    """Token ids with the image placeholders the architecture expects, and random pixels."""
    config = model.config
    g = torch.Generator().manual_seed(1)
    text = torch.randint(100, 30000, (batch, prompt_tokens), generator=g)
    if kind == "llava-1.5-7b":
        v = config.vision_config
        n_image = (v.image_size // v.patch_size) ** 2
        image = torch.full((batch, n_image), config.image_token_index)
        pixels = torch.randn(batch, 3, v.image_size, v.image_size, generator=g)
        ids = torch.cat([text[:, :8], image, text[:, 8:]], dim=1)
        extra = {"pixel_values": pixels.to(device, dtype)}
    else:
        v = config.vision_config
        grid = 16  # 224 px / 14: 256 patches, merged 2x2 into 64 tokens
        n_image = grid * grid // (v.spatial_merge_size ** 2)
        image = torch.cat([torch.full((batch, 1), config.vision_start_token_id),
                           torch.full((batch, n_image), config.image_token_id),
                           torch.full((batch, 1), config.vision_end_token_id)], dim=1)
        patch_dim = v.in_channels * v.temporal_patch_size * v.patch_size ** 2
        pixels = torch.randn(batch * grid * grid, patch_dim, generator=g)
        ids = torch.cat([text[:, :8], image, text[:, 8:]], dim=1)
        extra = {"pixel_values": pixels.to(device, dtype),
                 "image_grid_thw": torch.tensor([[1, grid, grid]] * batch, device=device)}
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids, device=device), **extra}


def summary_inputs(batch: int, device, prompt_tokens: int = 320) -> dict:
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(100, 30000, (batch, prompt_tokens), generator=g)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids, device=device)}


@torch.inference_mode()
def run(model, inputs: dict, new_tokens: int, device, decoding: Decoding = Decoding()) -> float:
    """Seconds for one generate call, with the options the captioner and summarizer serve with."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                   pad_token_id=0, **decoding.generate_options())
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="llava-1.5-7b,qwen2-vl-2b")
    parser.add_argument("--batches", default="1,4,16,64")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--tiny", action="store_true", help="tiny shapes on any device: a smoke run")
    parser.add_argument("--decodings", default="dynamic,static",
                        help=f"compared in the same run, of {sorted(DECODINGS)}: eager decoding (dynamic) and the "
                             "static cache, compiled on CUDA")
    parser.add_argument("--tasks", default="caption,summary",
                        help="caption (image and 64-token prompt), summary (320-token text prompt), or both")
    parser.add_argument("--out", default="bench/results/gpu_generation.json")
    args = parser.parse_args()

    tasks = [t for t in ("caption", "summary") if t in args.tasks.split(",")]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    result = {"benchmark": "generation at real-size VLM shapes, random weights",
              "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "dtype": str(dtype).removeprefix("torch."), "tiny": args.tiny, "new_tokens": args.new_tokens,
              "tasks": tasks,
              "models": {}}
    for kind in args.models.split(","):
        model = build(kind, args.tiny, device, dtype)
        params = sum(p.numel() for p in model.parameters())
        rows = []
        run(model, summary_inputs(1, device, 16), 2, device)  # warm-up: kernels, allocator
        for decoding_name in args.decodings.split(","):
            decoding = DECODINGS[decoding_name]
            for batch in (int(b) for b in args.batches.split(",")):
                row, first_call_s = {"decoding": decoding_name, "batch": batch}, {}
                for task in tasks:
                    inputs = (caption_inputs(kind, model, batch, device, dtype) if task == "caption"
                              else summary_inputs(batch, device))
                    # the first call at a shape compiles (static); the second is the served speed
                    first = run(model, inputs, args.new_tokens, device, decoding)
                    seconds = run(model, inputs, args.new_tokens, device, decoding) if decoding.static else first
                    first_call_s[task] = round(first, 2)
                    row[PER_S[task]] = round(batch / seconds, 3)
                    row[f"{task}_tokens_per_s"] = round(batch * args.new_tokens / seconds, 1)
                rows.append({**row, "first_call_s": first_call_s})
                peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
                result["models"][kind] = {"parameters": params, "peak_memory_gib": peak and round(peak, 1),
                                          "rows": rows, "vs_dynamic": against_dynamic(rows)}
                # written after every row: a run stopped at its time limit keeps what it measured
                write_result(args.out, {**result, "complete": False}, show=False)
                print(kind, rows[-1], flush=True)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    write_result(args.out, {**result, "complete": True})


def against_dynamic(rows: list[dict]) -> list[dict]:
    """Tokens/s of each other decoding over eager decoding (dynamic) at the same batch, same run."""
    dynamic = {r["batch"]: r for r in rows if r["decoding"] == "dynamic"}
    measures = [k for k in ("caption_tokens_per_s", "summary_tokens_per_s") if rows and k in rows[0]]
    return [{"decoding": r["decoding"], "batch": r["batch"],
             **{k: round(r[k] / dynamic[r["batch"]][k], 2) for k in measures}}
            for r in rows if r["decoding"] != "dynamic" and r["batch"] in dynamic]


if __name__ == "__main__":
    main()
