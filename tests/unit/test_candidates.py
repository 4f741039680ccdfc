"""Co-occurrence records and the blend, checked against hand-computed cases."""
import math

import pytest

from models.candidates.blend import fuse
from models.candidates.cooccurrence import CooccurrenceConfig, apply_entries, neighbour_scores, pair_entries, trend_key

CONFIG = CooccurrenceConfig(window=3, neighbours=3, decay=0.5, trending_half_life=100.0)


def test_an_interaction_pairs_with_the_previous_window_both_ways_with_position_decay():
    entries = pair_entries(["a", "b", "c", "d"], "e", partition=2, offset=7, event_ts=50.0, config=CONFIG)
    assert entries["e"] == {"p": 2, "o": 7, "t": 50.0, "c": 1, "n": {"d": 1.0, "c": 0.5, "b": 0.25}}
    assert entries["d"]["n"] == {"e": 1.0} and entries["b"]["n"] == {"e": 0.25} and entries["d"]["c"] == 0
    assert "a" not in entries  # outside the window of 3
    assert pair_entries(["e", "x"], "e", 0, 1, 0.0, CONFIG)["e"]["n"] == {"x": 1.0}  # the item itself is not a pair
    assert pair_entries(["a"], "e", 0, 1, 0.0, CooccurrenceConfig(window=0)) == {
        "e": {"p": 0, "o": 1, "t": 0.0, "c": 1, "n": {}}}


def test_a_redelivered_entry_is_skipped_by_its_source_offset():
    first = [{"p": 0, "o": 5, "t": 0.0, "c": 1, "n": {"x": 1.0}}, {"p": 1, "o": 2, "t": 0.0, "c": 0, "n": {"x": 2.0}}]
    record, new = apply_entries(None, first, CONFIG)
    assert new == 2 and record["neighbours"] == {"x": 3.0} and record["count"] == 1
    again, new = apply_entries(record, first + [{"p": 0, "o": 6, "t": 0.0, "c": 1, "n": {"y": 1.0}}], CONFIG)
    assert new == 1 and again["neighbours"] == {"x": 3.0, "y": 1.0} and again["count"] == 2
    assert again["applied"] == {"0": 6, "1": 2}
    assert record["neighbours"] == {"x": 3.0}  # the input record is not changed


def test_neighbours_are_pruned_to_the_top_m_once_a_fifth_over():
    entries = [{"p": 0, "o": n, "t": 0.0, "c": 0, "n": {f"i{n}": float(n)}} for n in range(1, 5)]
    record, _ = apply_entries(None, entries[:3], CONFIG)
    assert len(record["neighbours"]) == 3
    record, _ = apply_entries(record, entries[3:], CONFIG)  # 4 > 3 * 1.2: pruned to the 3 heaviest
    assert record["neighbours"] == {"i4": 4.0, "i3": 3.0, "i2": 2.0}


def test_trending_decays_by_event_time_and_orders_items_as_their_counts_now():
    old, _ = apply_entries(None, [{"p": 0, "o": n, "t": 0.0, "c": 1, "n": {}} for n in range(4)], CONFIG)
    new, _ = apply_entries(None, [{"p": 0, "o": 0, "t": 200.0, "c": 1, "n": {}}], CONFIG)
    assert old["trend"] == 4 and new["trend"] == 1
    # at t=200 the old item's 4 are worth 4 * 0.5^2 = 1: a tie with the new item's 1
    assert trend_key(old, 100.0) == pytest.approx(trend_key(new, 100.0))
    later, _ = apply_entries(old, [{"p": 0, "o": 9, "t": 100.0, "c": 1, "n": {}}], CONFIG)
    assert later["trend"] == pytest.approx(4 * 0.5 + 1) and later["trend_t"] == 100.0


def test_cosine_neighbour_scores_sum_over_recent_items():
    records = {"a": {"count": 4, "neighbours": {"x": 2.0, "y": 1.0}}, "b": {"count": 1, "neighbours": {"x": 1.0}}}
    counts = {"a": 4, "b": 1, "x": 1, "y": 9}
    scores = neighbour_scores(["a", "b"], records, counts, exclude={"a", "b"})
    assert scores["x"] == pytest.approx(2 / math.sqrt(4 * 1) + 1 / math.sqrt(1 * 1))
    assert scores["y"] == pytest.approx(1 / math.sqrt(4 * 9))


def test_weighted_reciprocal_rank_fusion_by_hand():
    ranked = {"cooccurrence": ["a", "b", "c"], "sequential": ["b", "d"], "trending": ["e", "a"]}
    weights = {"cooccurrence": 1.0, "sequential": 2.0, "content": 5.0, "trending": 0.5}
    fused = fuse(ranked, weights, k=4, rrf_k=10.0)
    expected = {"a": 1 / 11 + 0.5 / 12, "b": 1 / 12 + 2 / 11, "c": 1 / 13, "d": 2 / 12, "e": 0.5 / 11}
    assert [f.item_id for f in fused] == ["b", "d", "a", "c"]
    for f in fused:
        assert f.score == pytest.approx(expected[f.item_id])
    assert {f.item_id: f.sources for f in fused}["b"] == ("cooccurrence", "sequential")
    assert fused[2].sources == ("cooccurrence", "trending")


def test_fusion_excludes_the_history_and_ignores_sources_weighted_zero():
    ranked = {"cooccurrence": ["seen", "a"], "content": ["b"]}
    fused = fuse(ranked, {"cooccurrence": 1.0, "content": 0.0}, k=5, exclude={"seen"})
    assert [(f.item_id, f.sources) for f in fused] == [("a", ("cooccurrence",))]
    assert fuse({}, {"cooccurrence": 1.0}, k=3) == []


def test_newer_items_of_the_query_weigh_more():
    records = {"a": {"count": 1, "neighbours": {"x": 1.0}}, "b": {"count": 1, "neighbours": {"y": 1.0}}}
    counts = {"x": 1, "y": 1}
    equal = neighbour_scores(["a", "b"], records, counts, set())
    assert equal["x"] == equal["y"] == 1.0
    halved = neighbour_scores(["a", "b"], records, counts, set(), query_half_life=1.0)  # b is the newest
    assert halved == {"x": pytest.approx(0.5), "y": pytest.approx(1.0)}
