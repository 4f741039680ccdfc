"""The real SmolLM2-135M keeps a recurrent summary over three blocks."""
from __future__ import annotations

import pytest

from models.prompts import SUMMARY_PREFIX
from models.user_summarizer import SummarizerConfig, UserSummarizer

pytestmark = pytest.mark.slow

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


def test_three_blocks_give_three_distinct_summaries_with_the_phrase(smollm2):
    summarizer = UserSummarizer(smollm2, SummarizerConfig(max_new_tokens=40, max_chars=400))
    versions = summarizer.recurrent([HISTORY, HISTORY[:4]])
    first, second = versions
    assert len(first) == 3 and len(second) == 1  # the second user's 4th item waits for its block
    for summary in first + second:
        assert summary.startswith(SUMMARY_PREFIX) and len(summary) > len(SUMMARY_PREFIX) + 3
        assert "\n" not in summary and len(summary) <= 400
    assert len(set(first)) == 3, first
    assert second[0] == first[0]  # same first block, batched with another user: same greedy summary


def test_recurrent_continues_from_a_stored_summary(smollm2):
    summarizer = UserSummarizer(smollm2, SummarizerConfig(max_new_tokens=24))
    full = summarizer.recurrent([HISTORY[:6]])[0]
    resumed = summarizer.recurrent([HISTORY[3:6]], previous=[full[0]])[0]
    assert resumed == full[1:]


def test_direct_mode_summarizes_the_whole_history_at_once(smollm2):
    summarizer = UserSummarizer(smollm2, SummarizerConfig(max_new_tokens=24))
    (summary,) = summarizer.direct([HISTORY])
    assert summary.startswith(SUMMARY_PREFIX)
