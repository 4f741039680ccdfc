"""Captions and recurrent summaries, generated once and cached on disk by model, precision and input."""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path


from models.llm import pipeline
from models.config import EvalConfig

from models.evaluation.paper.data import Dataset, UserCase, _natural

def model_dtype(lm) -> str:
    """The precision a model generates in, as the text cache keys it (fp32 and bf16 texts differ)."""
    return str(getattr(lm.model, "dtype", "unknown"))


class TextCache:
    """Generated texts by a hash of (model, kind, settings, input); a rerun regenerates nothing."""

    def __init__(self, path: Path | None):
        self.path = path
        self.data: dict[str, str] = {}
        if path is not None and path.is_file():
            self.data = json.loads(path.read_text())

    @staticmethod
    def key(*parts) -> str:
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()

    def save(self) -> None:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.data))
            tmp.replace(self.path)


class Texts:
    """Captions and summaries for the protocol, batched and cached."""

    def __init__(self, lm, data: Dataset, config: EvalConfig, cache: TextCache, log, summary_lm=None):
        from models.llm.captioner import CaptionConfig, Captioner
        from models.llm.user_summarizer import SummarizerConfig, UserSummarizer

        self.lm, self.data, self.config, self.cache, self.log = lm, data, config, cache, log
        self.captioner = Captioner(lm, CaptionConfig(max_new_tokens=config.caption_tokens,
                                                          batch_size=config.generation_batch))
        self.summarizer = UserSummarizer(summary_lm or lm, SummarizerConfig(block_size=config.block,
                                                              max_new_tokens=config.summary_tokens,
                                                              batch_size=config.generation_batch))
        self.captions: dict[str, str] = {}

    def caption_all(self, item_ids: set[str]) -> None:
        from models.llm.captioner import ItemInput

        keys = {i: self.cache.key(self.lm.name, "caption", self.config.caption_tokens, self.data.items[i],
                                  model_dtype(self.lm))
                for i in item_ids}
        todo = sorted((i for i in item_ids if keys[i] not in self.cache.data), key=_natural)
        self.log(f"captions: {len(item_ids) - len(todo)} cached, {len(todo)} to write")
        step = self.config.generation_batch * 4
        for start in range(0, len(todo), step):
            chunk = todo[start:start + step]
            inputs = [ItemInput(i, self.data.items[i]["title"], self.data.items[i]["categories"],
                                self.data.items[i].get("description")) for i in chunk]
            for i, caption in zip(chunk, self.captioner.caption(inputs)):
                self.cache.data[keys[i]] = "" if caption.rejected else caption.text
            self.cache.save()
            self.log(f"captions: {min(start + step, len(todo))}/{len(todo)}")
        self.captions = {i: self.cache.data[keys[i]] for i in item_ids}

    def record(self, item_id: str) -> dict:
        """The item in the shape the stream stores it (``pipeline``'s input), with its caption."""
        return {**self.data.items[item_id], "item_id": item_id, "caption": self.captions.get(item_id)}

    def item_text(self, item_id: str, captions: bool) -> str:
        return pipeline.item_text(self.record(item_id), item_id, captions)

    def summaries(self, cases: list[UserCase], mode: str, captions: bool) -> dict[str, list[str]]:
        """S_1..S_T per user: recurrent (one batched step per block) or direct (each prefix of blocks at once)."""
        histories = [[self.item_text(i, captions) for i in c.window] for c in cases]
        # the prompt is part of the key: a summary written under another prompt is another text
        # and so is the precision: bf16 and fp32 greedy decoding write different texts (bench/cpu_precision.py)
        key = self.cache.key(self.summarizer.lm.name, "summaries", mode, self.config.summary_tokens, self.config.block,
                             self.summarizer.config.prompt.label, histories, model_dtype(self.summarizer.lm))
        if key not in self.cache.data:
            started = time.perf_counter()
            if mode == "recurrent":
                result = self.summarizer.recurrent(histories)
            else:
                size = self.config.block
                prefixes = [(u, h[:end]) for u, h in enumerate(histories) for end in range(size, len(h) + 1, size)]
                flat = self.summarizer.direct([p for _, p in prefixes])
                result = [[] for _ in histories]
                for (u, _), summary in zip(prefixes, flat):
                    result[u].append(summary)
            self.cache.data[key] = json.dumps(result)
            self.cache.save()
            self.log(f"summaries ({mode}, captions {'on' if captions else 'off'}): "
                     f"{sum(map(len, result))} in {time.perf_counter() - started:.0f}s")
        return {c.user_id: s for c, s in zip(cases, json.loads(self.cache.data[key]))}
