"""Recurrent user-preference summaries (MLLM-MSR stage 2), batched across users.

Block 1: "here are the items, summarize"; block t > 1: "here is the previous summary and the
next items, update it". The answer is started with the fixed phrase so every summary begins
with it, whatever the model's instruction following; the direct mode (whole history at once)
is the paper's non-recurrent ablation.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from models.llm import prompts
from models.llm.generation import Decoding, GenerationConfig, filler, generate, render, warm_up
from models.llm.pipeline import TEXT
from models.registry import LoadedModel


@dataclass(frozen=True)
class SummarizerConfig:
    block_size: int = field(default=TEXT.block_size, metadata={"help": "items per recurrent block (paper: B = 3)"})
    max_new_tokens: int = field(default=TEXT.summary_tokens, metadata={"help": "generated tokens per summary"})
    batch_size: int = field(default=16, metadata={"help": "users per model call"})
    decoding: Decoding = field(default_factory=Decoding, metadata={"help": "KV cache and compile settings of generation"})
    max_chars: int = field(default=TEXT.summary_chars, metadata={"help": "summary length cap, cut at a sentence end"})
    prompt: prompts.SummaryPrompt = field(default=prompts.SUMMARY_PROMPT, metadata={
        "help": "how the prompt is written (layout, genre and era cues, sentence limit)"})


@dataclass(frozen=True)
class BlockRequest:
    """One user's next update: the previous summary (None for block 1) and the block's item texts."""

    previous: str | None
    items: list[str]


class UserSummarizer:
    def __init__(self, lm: LoadedModel, config: SummarizerConfig = SummarizerConfig()):
        self.lm, self.config = lm, config
        self.generation = GenerationConfig(max_new_tokens=config.max_new_tokens, batch_size=config.batch_size,
                                           decoding=config.decoding)

    def messages(self, request: BlockRequest) -> list[dict]:
        if request.previous is None:
            return prompts.first_block_messages(request.items, self.config.prompt)
        return prompts.update_messages(request.previous, request.items, self.config.prompt)

    def warm_up(self) -> int:
        """Compile decoding before serving (``models.llm.generation.warm_up``) on update prompts, the
        longer kind: the longest the builder makes (every text at its cap) and a short one."""
        longest = BlockRequest(f"{prompts.SUMMARY_PREFIX} {filler(self.config.max_chars)}",
                               [filler(4000)] * self.config.block_size)
        shortest = BlockRequest(prompts.SUMMARY_PREFIX, ["-"] * self.config.block_size)
        rendered = [render(self.lm, self.messages(r), prompts.SUMMARY_PREFIX) for r in (longest, shortest)]
        return warm_up(self.lm, self.generation, *rendered)

    def update(self, requests: list[BlockRequest]) -> list[str]:
        """One recurrent step for many users at once."""
        rendered = [render(self.lm, self.messages(r), prompts.SUMMARY_PREFIX) for r in requests]
        return [prompts.normalize_summary(text, self.config.max_chars)
                for text in generate(self.lm, rendered, self.generation)]

    def recurrent(self, histories: list[list[str]], previous: list[str | None] | None = None,
                  on_step=None) -> list[list[str]]:
        """Every full block of every history, block by block; summaries after each block per user.

        Users advance together: step t updates all users that have a t-th block in one batch.
        ``on_step(n)`` is told after each step how many summaries it wrote (progress).
        """
        size = self.config.block_size
        blocks = [[h[i:i + size] for i in range(0, len(h) - len(h) % size, size)] for h in histories]
        current = list(previous) if previous is not None else [None] * len(histories)
        out: list[list[str]] = [[] for _ in histories]
        for step in range(max((len(b) for b in blocks), default=0)):
            users = [u for u, b in enumerate(blocks) if step < len(b)]
            summaries = self.update([BlockRequest(current[u], blocks[u][step]) for u in users])
            for u, summary in zip(users, summaries):
                current[u] = summary
                out[u].append(summary)
            if on_step is not None:
                on_step(len(users))
        return out

    def direct(self, histories: list[list[str]]) -> list[str]:
        """The non-recurrent ablation: one summary from each whole history."""
        rendered = [render(self.lm, prompts.direct_messages(h, self.config.prompt), prompts.SUMMARY_PREFIX) for h in histories]
        return [prompts.normalize_summary(text, self.config.max_chars)
                for text in generate(self.lm, rendered, self.generation)]
