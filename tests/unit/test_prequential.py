"""Scoring arithmetic of the prequential measures (offline replay and eval-stream)."""
import math

import pytest

from models.evaluation.prequential import Scores, hit_metrics, time_split
from streams.harness.eval_stream import RecentCounts, popularity_list, sample_of_users, shifted


def test_hit_metrics_by_rank():
    assert hit_metrics(["a", "b", "c"], "a", 10) == (1.0, 1.0, 1.0)
    assert hit_metrics(["a", "b", "c"], "c", 10) == (1.0, pytest.approx(1 / math.log2(4)), pytest.approx(1 / 3))
    assert hit_metrics(["a", "b", "c"], "c", 2) == (0.0, 0.0, 0.0)  # beyond k
    assert hit_metrics([], "a", 10) == (0.0, 0.0, 0.0)


def test_scores_average_over_events_and_count_coverage():
    s = Scores(k=2)
    s.add(["a", "b"], "a")
    s.add(["b", "c"], "x")
    summary = s.summary(catalog_size=4)
    assert summary["HR@2"] == 0.5 and summary["MRR@2"] == 0.5 and summary["events"] == 2
    assert summary["coverage"] == 0.75


def test_the_split_keeps_the_last_fraction_and_times_shift_together():
    assert time_split(list(range(100)), 0.1) == 90
    event = {"user_id": "u", "item_id": "i", "type": "click", "event_time": "2021-01-01T00:00:00Z"}
    assert shifted(event, 3600.5)["event_time"] == "2021-01-01T01:00:00.500000Z"


def test_popularity_lists_exclude_the_history_and_follow_the_counts():
    from collections import Counter

    counts, cache = Counter({"a": 5, "b": 3, "c": 3}), {"counts_version": 0}
    assert popularity_list(counts, {"a"}, 2, cache) == ["b", "c"]
    counts["c"] += 5
    cache["counts_version"] += 1
    assert popularity_list(counts, set(), 2, cache) == ["c", "a"]


def test_rank_within_counts_from_one_and_stops_at_k():
    from models.evaluation.prequential import rank_within

    assert rank_within(["a", "b", "c"], "c", 10) == 3 and rank_within(["a", "b", "c"], "c", 2) == 0
    assert rank_within([], "a", 10) == 0


def test_recent_popularity_counts_only_the_window_before_the_scored_event():
    day = lambda d, item: {"user_id": "u", "item_id": item, "event_time": f"2021-03-{d:02d}T12:00:00Z"}  # noqa: E731
    recent = RecentCounts(7 * 86400.0)
    for event in [day(1, "old")] * 5 + [day(6, "a")] * 2 + [day(7, "b")] * 3 + [day(8, "a")] * 2:
        recent.add(event)
    # at March 8th noon the window starts March 1st noon: 'old' is still in (5 > 4 > 3)
    assert recent.top(day(8, "x"), set(), 3) == ["old", "a", "b"]
    # two days later 'old' has left the window; the history is excluded
    assert recent.top(day(10, "x"), set(), 3) == ["a", "b"]
    assert recent.top(day(10, "x"), {"a"}, 3) == ["b"]
    assert recent.top(day(20, "x"), set(), 3) == []


def test_a_user_sample_keeps_all_their_events_in_order_and_is_seeded():
    events = [{"user_id": f"u{n % 7}", "item_id": f"i{n}"} for n in range(70)]
    sample = sample_of_users(events, 3, seed=1)
    users = {e["user_id"] for e in sample}
    assert len(users) == 3 and len(sample) == 30 and sample == [e for e in events if e["user_id"] in users]
    assert sample == sample_of_users(events, 3, seed=1) and sample_of_users(events, 0, 1) is events
