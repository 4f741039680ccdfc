"""Batched greedy generation over chat messages, for text LMs and vision-language models alike."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import MaxLengthCriteria, StoppingCriteriaList

from models.registry import LoadedModel


KV_CACHES = ("dynamic", "static")
COMPILE_MODES = ("auto", "always", "never")
# where transformers compiles a static cache's decoding step unasked (GenerationMixin._valid_auto_compile_criteria)
AUTO_COMPILE_DEVICES = ("cuda", "xpu", "neuron", "tpu")


@dataclass(frozen=True)
class Decoding:
    """How captions and summaries decode: one setting for both, passed through their configs."""

    kv_cache: str = field(default="dynamic", metadata={
        "help": "'static': a preallocated KV cache, and prompts padded to a multiple of pad_multiple, so on a GPU "
                "transformers compiles the decoding step (torch.compile) and the host no longer bounds batch-1 "
                "decoding; 'dynamic': eager decoding, no compile time (the CPU default)"})
    pad_multiple: int = field(default=64, metadata={"help": "prompt length bucket with the static cache (fewer shapes to compile)"})
    compile: str = field(default="auto", metadata={
        "help": "with the static cache: 'auto' compiles the decoding step where transformers does by default (CUDA, "
                "XPU), 'always' on any device, the CPU included (bench/results/cpu_generation.json), 'never' "
                "decodes eagerly"})
    cache_len: int = field(default=0, metadata={
        "help": "static cache length in tokens (prompt plus generated); 0: as long as the longest call so far "
                "(it grows, and the step recompiles, when a longer call comes); a fixed length that covers every "
                "call keeps one shape, but every step attends over all of it (slower: cpu_generation.json)"})

    def __post_init__(self):
        if self.kv_cache not in KV_CACHES:
            raise ValueError(f"kv_cache must be one of {KV_CACHES}, not {self.kv_cache!r}")
        if self.compile not in COMPILE_MODES:
            raise ValueError(f"compile must be one of {COMPILE_MODES}, not {self.compile!r}")
        if self.cache_len < 0 or self.pad_multiple < 1:
            raise ValueError("cache_len must be at least 0 and pad_multiple at least 1")

    @property
    def static(self) -> bool:
        return self.kv_cache == "static"

    def compiles_on(self, device: torch.device | str) -> bool:
        """Whether ``generate`` compiles the decoding step on ``device`` with these settings."""
        if not self.static or self.compile == "never":
            return False
        return self.compile == "always" or torch.device(device).type in AUTO_COMPILE_DEVICES

    def generate_options(self) -> dict:
        """Keyword arguments of ``model.generate`` for the cache and compile settings."""
        if not self.static:
            return {}
        options = {"cache_implementation": "static"}
        if self.cache_len:
            options["max_cache_len"] = self.cache_len
        if self.compile == "never":
            options["disable_compile"] = True
        elif self.compile == "always":
            from transformers import CompileConfig

            compile_config = CompileConfig()
            # transformers' own switch for compiling off CUDA (its CPU tests compile this way)
            compile_config._compile_all_devices = True
            options["compile_config"] = compile_config
        return options


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = field(default=200, metadata={"help": "tokens generated per sequence"})
    batch_size: int = field(default=16, metadata={"help": "sequences per model call"})
    do_sample: bool = field(default=False, metadata={"help": "sample (False: greedy, the same inputs give the same text)"})
    decoding: Decoding = field(default_factory=Decoding, metadata={"help": "KV cache and compile settings"})

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError("batch_size must be at least 1")

    def rows_for(self, sequences: int) -> int:
        """Rows a call runs with: ``sequences`` when eager; with the static cache, the next power of
        two, at most ``batch_size``.

        torch.compile makes the batch size dynamic after its second shape, but on CUDA
        (``reduce-overhead``) a CUDA graph is still recorded for each size met, so the sizes are
        bucketed: 1, 2, 4, ... batch_size. On a GPU the filler rows cost little, since small-batch
        decoding is bound by reading the weights, not by the rows.
        """
        if not self.decoding.static:
            return sequences
        return min(self.batch_size, 1 << (sequences - 1).bit_length())

    def row_buckets(self) -> list[int]:
        """Every row count a static-cache call can run with: 1, 2, 4, ... and ``batch_size``."""
        return sorted({self.rows_for(n) for n in range(1, self.batch_size + 1)})


def render(lm: LoadedModel, messages: list[dict], answer_prefix: str = "") -> str:
    """The chat template with the generation prompt, plus text the answer must begin with."""
    template_owner = lm.processor if lm.is_vision else lm.tokenizer
    prompt = template_owner.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return prompt + answer_prefix


class StopAfter(MaxLengthCriteria):
    """transformers' length criterion under a type of its own: ``generate`` replaces its default
    criterion with a custom one of the same type (warning that it did), and the default is what
    bounds a call at ``max_new_tokens``; this one is kept beside it and stops earlier."""


@torch.inference_mode()
def generate(lm: LoadedModel, prompts: list[str], config: GenerationConfig,
             images: list | None = None, stop_after: int = 0) -> list[str]:
    """Continuations of rendered prompts, in order, ``config.batch_size`` at a time (left padded).

    ``images``: for a vision model, one PIL image or None per prompt; prompts with an image
    contain the image token, the others are text only. Image and text-only prompts are batched
    separately, since the processor takes images for all or none of a batch.

    ``stop_after``: end each call after that many new tokens, with the cache still sized for
    ``config.max_new_tokens`` (the warm-up compiles the shapes serving uses without decoding them all).
    """
    out: list[str | None] = [None] * len(prompts)
    groups: dict[bool, list[int]] = {}
    for i in range(len(prompts)):
        groups.setdefault(bool(images and images[i] is not None), []).append(i)
    for with_image, indices in groups.items():
        for start in range(0, len(indices), config.batch_size):
            chunk = indices[start:start + config.batch_size]
            # filler rows (static cache) repeat the last prompt: they are decoded and dropped
            rows = chunk + chunk[-1:] * (config.rows_for(len(chunk)) - len(chunk))
            texts = [prompts[i] for i in rows]
            if lm.is_vision and with_image:  # image tokens expand inside the model: no length bucket
                enc = lm.processor(text=texts, images=[images[i] for i in rows], return_tensors="pt", padding=True)
            else:
                enc = lm.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False,
                                   pad_to_multiple_of=config.decoding.pad_multiple if config.decoding.static else None)
            enc = {k: (v.to(lm.device, lm.dtype) if v.is_floating_point() else v.to(lm.device)) for k, v in enc.items()}
            # beside generate's own max_new_tokens bound (past it the static cache has no room)
            last = enc["input_ids"].shape[1] + stop_after
            stopping = {"stopping_criteria": StoppingCriteriaList([StopAfter(last)])} if stop_after else {}
            with lm.lock:
                generated = lm.model.generate(**enc, max_new_tokens=config.max_new_tokens, do_sample=config.do_sample,
                                              pad_token_id=lm.tokenizer.pad_token_id, **config.decoding.generate_options(),
                                              **stopping)
            new_tokens = generated[:, enc["input_ids"].shape[1]:]
            for i, text in zip(chunk, lm.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)):
                out[i] = text
    return out  # type: ignore[return-value]


WARM_UP_TOKENS = 4  # decoding steps per warm-up call: the compile comes at the first, CUDA graphs are recorded by the third


def warm_up(lm: LoadedModel, config: GenerationConfig, longest: str, shortest: str) -> int:
    """Compile the decoding step before the first request, where ``generate`` would compile it: one
    call per row bucket. Returns the calls made (0 where nothing compiles).

    Without it the first batch of each size pays the compile (21-41 s a batch size on 2 CPU cores
    with 'always', bench/results/warm_up.json; CUDA also records a graph per size), and the lists
    waiting on those summaries wait with it. Each call decodes only ``WARM_UP_TOKENS`` but sizes the
    cache as serving does. With a fixed ``cache_len`` any prompt compiles the shapes serving uses,
    so the shortest is run. With ``cache_len`` 0 the cache never shrinks and a request longer than
    every earlier one would grow it and recompile, so the caller's longest prompt is run: the
    cache starts at the length a long-running role would reach anyway, and every step attends
    over all of it (slower where attention is not free: the CPU, bench/results/warm_up.json).
    """
    if not config.decoding.compiles_on(lm.device):
        return 0
    prompt = shortest if config.decoding.cache_len else longest
    buckets = config.row_buckets()
    for rows in buckets:
        generate(lm, [prompt] * rows, config, stop_after=WARM_UP_TOKENS)
    return len(buckets)


def filler(chars: int) -> str:
    """Plain English of about ``chars`` characters: stands in for item and summary texts at their caps."""
    sentence = "A quiet drama about a family, the secrets it keeps and the long summer by the sea. "
    return (sentence * (chars // len(sentence) + 1))[:chars]
