"""The texts every MLLM-MSR stage reads, built once for training, evaluation and serving.

An adapter trained on one rendering of items and histories and served on another is scored
out of distribution, so the stream (``streams.stages``) and the protocol
(``models.evaluation.paper``) both build summary inputs, candidates and scoring requests here, from
item records of one shape (the item profile the stream stores: ``item_id``, ``title``,
``categories``, ``description``, ``caption``, ``caption_rejected``) and one ``TextConfig``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

from models.llm import prompts
from models.llm.requests import Candidate, ScoreRequest


@dataclass(frozen=True)
class TextConfig:
    """Generation and prompt sizes shared by every path; ``Settings`` and ``EvalConfig`` default to these."""

    block_size: int = field(default=3, metadata={"help": "items per recurrent summary block (paper: B = 3)"})
    caption_tokens: int = field(default=200, metadata={"help": "generated tokens per item caption"})
    summary_tokens: int = field(default=256, metadata={"help": "generated tokens per summary"})
    summary_chars: int = field(default=1200, metadata={"help": "summary length cap, cut at a sentence end"})
    caption_chars: int = field(default=600, metadata={"help": "longest caption put in a candidate's part"})


TEXT = TextConfig()


def usable_caption(item: Mapping) -> str | None:
    """The caption, unless the captioner's output was rejected (empty or degenerate)."""
    if item.get("caption_rejected"):
        return None
    return item.get("caption") or None


def item_text(item: Mapping | None, item_id: str, captions: bool = True) -> str:
    """An item as the user summarizer reads it; an item missing from the catalog by its id."""
    if not item:
        return f"Item {prompts.clean(item_id, 256)} (no catalog entry)"
    return prompts.describe_item(item.get("title") or item_id, item.get("categories") or None,
                                 item.get("description"), usable_caption(item) if captions else None)


def summary_inputs(items: Iterable[tuple[str, Mapping | None]], captions: bool = True) -> list[str]:
    """The texts of one block (or history) in time order, from (item_id, record) pairs."""
    return [item_text(record, item_id, captions) for item_id, record in items]


def candidate(item: Mapping | None, item_id: str, captions: bool = True):
    """What the recommender sees of a candidate (text; images enter through captions)."""
    item = item or {}
    return Candidate(item_id, item.get("title") or item_id, tuple(item.get("categories") or ()) or None,
                     item.get("description"), usable_caption(item) if captions else None)


def preference_request(summary: str, candidates: list, history: Iterable[str] = ()):
    """The MLLM-MSR scoring request: the recurrent summary as the shared part (``history``, the
    user's recent item ids, is what collaborative tokens read)."""
    return ScoreRequest(prompts.user_preferences(summary), list(candidates), tuple(history))


def recent_titles_request(titles: list[str], candidates: list):
    """The TALLRec-style scoring request: the recent titles as the shared part."""
    return ScoreRequest(prompts.user_recent_items(titles), list(candidates))
