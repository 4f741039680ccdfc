"""The default summarizer (the model ``make setup`` converts) keeps a recurrent summary over three blocks."""
from __future__ import annotations

import pytest

from models.evaluation import summary_quality
from models.llm.prompts import SUMMARY_PREFIX
from models.llm.user_summarizer import SummarizerConfig, UserSummarizer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def summarizer_lm():
    from models import registry
    from streams.settings import Settings

    return registry.load(Settings().summary_model, device="cpu", generates=True)  # as the worker loads it

HISTORY = [
    "Title: Toy Story (1995); Categories: Animation, Children's, Comedy",
    "Title: Aladdin (1992); Categories: Animation, Children's, Musical",
    "Title: Lion King, The (1994); Categories: Animation, Children's, Musical",
    "Title: Alien (1979); Categories: Horror, Sci-Fi",
    "Title: Aliens (1986); Categories: Action, Sci-Fi, Thriller",
    "Title: Terminator, The (1984); Categories: Action, Sci-Fi",
    "Title: Casablanca (1942); Categories: Drama, Romance, War",
    "Title: Roman Holiday (1953); Categories: Comedy, Romance",
    "Title: Sabrina (1954); Categories: Comedy, Romance",
]


def test_three_blocks_give_three_distinct_summaries_with_the_phrase(summarizer_lm):
    summarizer = UserSummarizer(summarizer_lm, SummarizerConfig(max_new_tokens=40, max_chars=400))
    versions = summarizer.recurrent([HISTORY, HISTORY[:4]])
    first, second = versions
    assert len(first) == 3 and len(second) == 1  # the second user's 4th item waits for its block
    for summary in first + second:
        assert summary.startswith(SUMMARY_PREFIX) and len(summary) > len(SUMMARY_PREFIX) + 3
        assert "\n" not in summary and len(summary) <= 400
    assert len(set(first)) == 3, first
    assert second[0] == first[0]  # same first block, batched with another user: same greedy summary
    # what the summaries say stands on the items: no degenerate text, no title the user never saw,
    # and the genres they name are among the genres of the items summarized so far
    from models.data import movielens

    catalog = {i["title"]: i["item_id"] for i in movielens.items()}
    history_ids = [catalog[text.split("; ")[0][len("Title: "):]] for text in HISTORY]
    titles = summary_quality.TitleMatcher({item_id: title for title, item_id in catalog.items()})
    genres = [{g.strip() for g in text.split("Categories: ")[1].split(",")} for text in HISTORY]
    for t, summary in enumerate(first, 1):
        assert summary_quality.degenerate(summary) is None, summary
        assert not titles.invented(summary, seen=history_ids[:3 * t]), summary
        grounded, named = summary_quality.grounding(summary, set().union(*genres[:3 * t]))
        assert named and grounded == named, summary


def test_recurrent_continues_from_a_stored_summary(summarizer_lm):
    summarizer = UserSummarizer(summarizer_lm, SummarizerConfig(max_new_tokens=24))
    full = summarizer.recurrent([HISTORY[:6]])[0]
    resumed = summarizer.recurrent([HISTORY[3:6]], previous=[full[0]])[0]
    assert resumed == full[1:]


def test_direct_mode_summarizes_the_whole_history_at_once(summarizer_lm):
    summarizer = UserSummarizer(summarizer_lm, SummarizerConfig(max_new_tokens=24))
    (summary,) = summarizer.direct([HISTORY])
    assert summary.startswith(SUMMARY_PREFIX)
