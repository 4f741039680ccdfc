"""Batched greedy generation over chat messages, for text LMs and vision-language models alike."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from models.registry import LoadedModel


KV_CACHES = ("dynamic", "static")


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = field(default=200, metadata={"help": "tokens generated per sequence"})
    batch_size: int = field(default=16, metadata={"help": "sequences per model call"})
    do_sample: bool = field(default=False, metadata={"help": "sample (False: greedy, the same inputs give the same text)"})
    kv_cache: str = field(default="dynamic", metadata={
        "help": "'static': a preallocated KV cache, and prompts padded to a multiple of pad_multiple, so on a GPU "
                "transformers compiles the decoding step once per shape (torch.compile) and the host no longer "
                "bounds batch-1 decoding; 'dynamic': eager decoding, no compile time (the CPU default)"})
    pad_multiple: int = field(default=64, metadata={"help": "prompt length bucket with the static cache (fewer shapes to compile)"})

    def __post_init__(self):
        if self.kv_cache not in KV_CACHES:
            raise ValueError(f"kv_cache must be one of {KV_CACHES}, not {self.kv_cache!r}")


def render(lm: LoadedModel, messages: list[dict], answer_prefix: str = "") -> str:
    """The chat template with the generation prompt, plus text the answer must begin with."""
    template_owner = lm.processor if lm.is_vision else lm.tokenizer
    prompt = template_owner.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return prompt + answer_prefix


@torch.inference_mode()
def generate(lm: LoadedModel, prompts: list[str], config: GenerationConfig,
             images: list | None = None) -> list[str]:
    """Continuations of rendered prompts, in order, ``config.batch_size`` at a time (left padded).

    ``images``: for a vision model, one PIL image or None per prompt; prompts with an image
    contain the image token, the others are text only. Image and text-only prompts are batched
    separately, since the processor takes images for all or none of a batch.
    """
    out: list[str | None] = [None] * len(prompts)
    groups: dict[bool, list[int]] = {}
    for i in range(len(prompts)):
        groups.setdefault(bool(images and images[i] is not None), []).append(i)
    for with_image, indices in groups.items():
        for start in range(0, len(indices), config.batch_size):
            chunk = indices[start:start + config.batch_size]
            texts = [prompts[i] for i in chunk]
            static = config.kv_cache == "static"
            if lm.is_vision and with_image:  # image tokens expand inside the model: no length bucket
                enc = lm.processor(text=texts, images=[images[i] for i in chunk], return_tensors="pt", padding=True)
            else:
                enc = lm.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False,
                                   pad_to_multiple_of=config.pad_multiple if static else None)
            enc = {k: (v.to(lm.device, lm.dtype) if v.is_floating_point() else v.to(lm.device)) for k, v in enc.items()}
            with lm.lock:
                generated = lm.model.generate(**enc, max_new_tokens=config.max_new_tokens, do_sample=config.do_sample,
                                              pad_token_id=lm.tokenizer.pad_token_id,
                                              cache_implementation="static" if static else None)
            new_tokens = generated[:, enc["input_ids"].shape[1]:]
            for i, text in zip(chunk, lm.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)):
                out[i] = text
    return out  # type: ignore[return-value]
