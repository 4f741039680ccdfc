"""What a user summary tells about the user: the measures of ``bench/summary_quality.py``.

A summary is worth its generation cost only if it carries more about the user's next items than
a template of their top genres does, names nothing the user never saw, and says only what its
items support. Each measure here is a plain function over texts and ids, so a hand-made fixture
pins it (``tests/models/test_summary_quality.py``).

- **degenerate**: the captioner's detector (``degenerate_reason``) on what the summary says after
  its fixed opening ("1. 1." is too short, a looping list repeats its phrases).
- **invented titles**: catalog titles the summary names that the user had not interacted with.
- **genre grounding**: of the genres the summary names, the share found among the genres of the
  items it summarized (for a recurrent summary: every block so far).
- **informativeness**: the summary embedded with the project's embedder ranks the whole catalog
  by cosine similarity to the item texts (history excluded); HR@k and NDCG@k of the next block.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np

from models.llm.captioner import degenerate_reason
from models.llm.prompts import SUMMARY_PREFIX, summary_body

# MovieLens' genres and the words a summary uses for them (lower case, whole words)
GENRE_WORDS: dict[str, tuple[str, ...]] = {
    "Action": ("action",),
    "Adventure": ("adventure", "adventures", "adventurous"),
    "Animation": ("animation", "animated", "cartoon", "cartoons"),
    "Children's": ("children's", "children", "kids", "family", "family-friendly"),
    "Comedy": ("comedy", "comedies", "comedic", "funny", "humor", "humour", "humorous"),
    "Crime": ("crime", "crimes", "gangster", "gangsters"),
    "Documentary": ("documentary", "documentaries"),
    "Drama": ("drama", "dramas", "dramatic"),
    "Fantasy": ("fantasy", "fantasies"),
    "Film-Noir": ("film-noir", "noir"),
    "Horror": ("horror", "scary"),
    "Musical": ("musical", "musicals"),
    "Mystery": ("mystery", "mysteries", "mysterious"),
    "Romance": ("romance", "romances", "romantic"),
    "Sci-Fi": ("sci-fi", "science fiction", "science-fiction", "scifi"),
    "Thriller": ("thriller", "thrillers", "suspense", "suspenseful"),
    "War": ("war",),
    "Western": ("western", "westerns"),
}
_GENRE_PATTERN = re.compile(
    r"(?<![\w-])(" + "|".join(sorted((re.escape(w) for ws in GENRE_WORDS.values() for w in ws), key=len, reverse=True))
    + r")(?![\w-])", re.IGNORECASE)
_WORD_TO_GENRE = {w: g for g, ws in GENRE_WORDS.items() for w in ws}
_YEAR = re.compile(r"\s*\((\d{4})\)\s*$")
_ARTICLE = re.compile(r"^(.*), (The|A|An|Les|La|Le|Il|Das|Der|Die|El)$")


body = summary_body


def degenerate(summary: str) -> str | None:
    return degenerate_reason(body(summary))


def genres_in(text: str) -> set[str]:
    return {_WORD_TO_GENRE[m.group(1).lower()] for m in _GENRE_PATTERN.finditer(text)}


def grounding(summary: str, summarized_genres: Iterable[str]) -> tuple[int, int]:
    """(genres named that the summarized items have, genres named): the share is the first over the second."""
    named = genres_in(body(summary))
    return len(named & set(summarized_genres)), len(named)


def title_forms(title: str) -> list[str]:
    """The ways a summary can name a catalog title: as written ("Usual Suspects, The (1995)"), its name
    with the article in front and the year ("The Usual Suspects (1995)"), and that name alone when it
    has at least two words (a one-word name such as "Heat" is too often an ordinary word)."""
    year = _YEAR.search(title)
    name = title[:year.start()].strip() if year else title.strip()
    moved = _ARTICLE.match(name)
    front = f"{moved.group(2)} {moved.group(1)}" if moved else name
    forms = {title.strip()}
    if year:
        forms.add(f"{front} ({year.group(1)})")
    if len(front.split()) >= 2:
        forms.add(front)
    return [f for f in forms if len(f) >= 3]


class TitleMatcher:
    """Catalog titles named in a text: case-sensitive, on word boundaries."""

    def __init__(self, titles: Mapping[str, str]):
        self.ids_of: dict[str, set[str]] = {}
        for item_id, title in titles.items():
            for form in title_forms(title):
                self.ids_of.setdefault(form, set()).add(item_id)
        forms = sorted(self.ids_of, key=len, reverse=True)
        self.pattern = re.compile(r"(?<!\w)(" + "|".join(map(re.escape, forms)) + r")(?!\w)") if forms else None

    def named(self, text: str) -> list[set[str]]:
        """One set of item ids per title named (a name several items share gives all of them)."""
        if self.pattern is None:
            return []
        return [self.ids_of[m.group(1)] for m in self.pattern.finditer(text)]

    def invented(self, summary: str, seen: Iterable[str]) -> list[str]:
        """Names of titles the user had not interacted with (none of the items that bear the name)."""
        seen = set(seen)
        out = []
        for ids in self.named(body(summary)):
            if not ids & seen:
                out.append(sorted(ids)[0])
        return out


@dataclass(frozen=True)
class RankHit:
    hr: float
    ndcg: float


def rank_targets(query: np.ndarray, items: np.ndarray, item_ids: list[str], exclude: Iterable[str],
                 targets: Iterable[str], k: int) -> RankHit:
    """Rank every item by cosine similarity to ``query`` (unit vectors: a dot product), excluded items
    removed; HR@k is the share of ``targets`` in the top k, NDCG@k their DCG over the ideal one."""
    index = {item: n for n, item in enumerate(item_ids)}
    scores = items @ query
    excluded = [index[i] for i in set(exclude) if i in index]
    scores = scores.astype(np.float64)
    scores[excluded] = -np.inf
    top = np.argsort(-scores, kind="stable")[:k]
    position = {int(n): r for r, n in enumerate(top, 1)}
    wanted = [index[t] for t in dict.fromkeys(targets) if t in index]
    if not wanted:
        raise ValueError("no target is in the catalog")
    ranks = [position[n] for n in wanted if n in position]
    dcg = sum(1.0 / math.log2(r + 1) for r in ranks)
    ideal = sum(1.0 / math.log2(r + 1) for r in range(1, min(len(wanted), k) + 1))
    return RankHit(len(ranks) / len(wanted), dcg / ideal)


def decade(title: str) -> str | None:
    year = _YEAR.search(title)
    return f"{year.group(1)[:3]}0s" if year else None


def template_profile(records: list[Mapping], top: int = 3) -> str:
    """The no-LLM baseline: the history's top genres and most common decade as one sentence."""
    genres = Counter(g for r in records for g in (r.get("categories") or []))
    decades = Counter(d for r in records if (d := decade(r.get("title") or "")))
    named = [g for g, _ in sorted(genres.items(), key=lambda kv: (-kv[1], kv[0]))[:top]]
    listed = ", ".join(named[:-1]) + f" and {named[-1]}" if len(named) > 1 else (named[0] if named else "varied")
    era = f" from the {decades.most_common(1)[0][0]}" if decades else ""
    return f"{SUMMARY_PREFIX} {listed} films{era}."


def recent_titles_text(records: list[Mapping], n: int = 10) -> str:
    """The TALLRec-style baseline: the most recent titles as the user's text, oldest first."""
    return "; ".join((r.get("title") or "") for r in records[-n:])
