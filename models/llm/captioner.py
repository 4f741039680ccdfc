"""The captioner (MLLM-MSR stage 1, the paper's item summarizer): a vision-language model describes each item's image.

With a vision model, items whose image loads are captioned from image and title; a missing or
broken image falls back to a text-only prompt to the same model, with the reason recorded. With
a text LM (the offline default) every item is summarized from title, categories and description.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from models.llm import prompts
from models.llm.generation import Decoding, GenerationConfig, filler, generate, render, warm_up
from models.images import ImageError, ImageLimits, load_image
from models.llm.pipeline import TEXT
from models.registry import LoadedModel


@dataclass(frozen=True)
class CaptionConfig:
    max_new_tokens: int = field(default=TEXT.caption_tokens, metadata={"help": "generated tokens per caption"})
    batch_size: int = field(default=16, metadata={"help": "items per model call"})
    decoding: Decoding = field(default_factory=Decoding, metadata={"help": "KV cache and compile settings of generation"})
    max_chars: int = field(default=2000, metadata={"help": "caption length cap"})
    limits: ImageLimits = field(default_factory=ImageLimits, metadata={"help": "image fetch and size limits"})


@dataclass(frozen=True)
class ItemInput:
    item_id: str
    title: str
    categories: list[str] | None = None
    description: str | None = None
    image: str | None = None  # file path, http(s) URL or data URI


@dataclass(frozen=True)
class Caption:
    text: str
    source: str  # "image": the model saw the image; "text": title, categories and description only
    image_error: str | None = None  # why an image the item names was not used
    rejected: str | None = None  # why the text should not be used as a caption: empty or degenerate

    def to_dict(self) -> dict:
        return {"caption": self.text, "caption_source": self.source, "image_error": self.image_error,
                "caption_rejected": self.rejected}


def degenerate_reason(text: str, min_words: int = 4, max_run: int = 3, min_distinct: float = 0.3) -> str | None:
    """Why a generated caption carries no usable content, or None.

    Small models loop ("noir noir noir ...") or stop at once; such text would only add noise to
    the item's embedding and to every prompt that shows it.
    """
    words = re.findall(r"\w+", text.lower())
    if len(words) < min_words:
        return f"too short ({len(words)} words)"
    run = longest = 1
    for before, word in zip(words, words[1:]):
        run = run + 1 if word == before else 1
        longest = max(longest, run)
    if longest > max_run:
        return f"a word repeated {longest} times in a row"
    for n in (2, 3, 4):
        grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
        if len(grams) >= 6 and len(set(grams)) / len(grams) < min_distinct:
            return f"repeated {n}-word phrases ({len(set(grams))} distinct of {len(grams)})"
    return None


class Captioner:
    def __init__(self, lm: LoadedModel, config: CaptionConfig = CaptionConfig()):
        self.lm, self.config = lm, config
        self.generation = GenerationConfig(max_new_tokens=config.max_new_tokens, batch_size=config.batch_size,
                                           decoding=config.decoding)

    def warm_up(self) -> int:
        """Compile decoding before serving (``models.llm.generation.warm_up``) on text-only item prompts:
        the longest (every field at its cap) and a short one. A vision model's image prompts are
        longer: with a cache sized by the calls, the first one grows it and recompiles once."""
        longest = prompts.item_caption_messages(filler(4000), [filler(4000)], filler(4000), with_image=False)
        shortest = prompts.item_caption_messages("-", None, None, with_image=False)
        return warm_up(self.lm, self.generation, render(self.lm, longest), render(self.lm, shortest))

    def _image(self, item: ItemInput):
        """(image or None, reason it is not used or None)."""
        if not item.image:
            return None, None
        if not self.lm.is_vision:
            return None, f"{self.lm.name} reads no images"
        try:
            return load_image(item.image, self.config.limits), None
        except ImageError as exc:
            return None, str(exc)

    def caption(self, items: list[ItemInput]) -> list[Caption]:
        loaded = [self._image(item) for item in items]
        rendered = [render(self.lm, prompts.item_caption_messages(item.title, item.categories, item.description,
                                                                  with_image=image is not None))
                    for item, (image, _) in zip(items, loaded)]
        texts = generate(self.lm, rendered, self.generation, images=[image for image, _ in loaded])
        captions = []
        for item, (image, error), text in zip(items, loaded, texts):
            text = prompts.normalize_caption(text, self.config.max_chars)
            if not text:  # a model that says nothing still leaves the item a usable description
                captions.append(Caption(prompts.describe_item(item.title, item.categories, item.description),
                                        "text", error or "the model generated an empty caption", "empty"))
            else:
                captions.append(Caption(text, "image" if image is not None else "text", error,
                                        degenerate_reason(text)))
        return captions
