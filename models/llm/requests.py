"""What the recommender scores: a user's shared part and candidates. Plain dataclasses, torch-free,
so the one prompt builder (``models.llm.pipeline``) and the recommender both import them, and
neither imports the other."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Candidate:
    """What the recommender sees of an item; ``image`` is a PIL image (vision models) or None."""

    item_id: str
    title: str
    categories: tuple[str, ...] | list[str] | None = None
    description: str | None = None
    caption: str | None = None
    image: object | None = None


@dataclass(frozen=True)
class ScoreRequest:
    """One user's shared part (``prompts.user_preferences`` or ``user_recent_items``) and candidates;
    ``history`` (item ids, oldest first) is what collaborative tokens read of the user."""

    user_part: str
    candidates: list[Candidate]
    history: tuple[str, ...] = ()
