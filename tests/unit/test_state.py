from streams.state import UserState, content_hash


def event(item, t="2026-03-01T10:00:00Z"):
    return {"user_id": "u", "item_id": item, "type": "view", "event_time": t}


def test_apply_keeps_a_capped_tail_seen_set_and_pending_block():
    s = UserState("u")
    new = [s.apply(event(item), 3, offset, tail=3, seen_cap=3, pending_cap=2)
           for offset, item in enumerate(["a", "b", "a", "c", "d"])]
    assert new == [True, True, False, True, True]
    assert s.interaction_count == 5
    assert [h["item_id"] for h in s.history] == ["a", "c", "d"]
    assert s.seen == ["b", "c", "d"]  # distinct, oldest dropped at the cap
    assert [h["item_id"] for h in s.pending_block] == ["c", "d"]
    assert (s.partition, s.last_offset) == (3, 4)


def test_redelivered_offsets_are_recognised():
    s = UserState("u")
    s.apply(event("a"), 1, 10, tail=5, seen_cap=5, pending_cap=3)
    assert s.already_applied(1, 10) and s.already_applied(1, 9)
    assert not s.already_applied(1, 11)
    assert not s.already_applied(2, 5)  # another partition's offsets are not comparable


def test_round_trip_through_dict_ignores_unknown_fields():
    s = UserState("u", interaction_count=2, summary="x")
    assert UserState.from_dict({**s.to_dict(), "future_field": 1}, "u") == s
    assert UserState.from_dict(None, "v") == UserState("v")


def test_content_hash_changes_only_with_content():
    base = {"item_id": "1", "title": "A", "categories": ["x"], "event_time": "2026-01-01T00:00:00Z"}
    assert content_hash(base) == content_hash({**base, "event_time": "2027-01-01T00:00:00Z"})
    assert content_hash(base) != content_hash({**base, "title": "B"})
    assert content_hash(base) != content_hash({**base, "image": "http://x/y.png"})


def test_full_blocks_are_consumed_oldest_first_and_count_versions():
    s = UserState("u")
    for offset, item in enumerate("abcdefg"):
        s.apply(event(item), 0, offset, tail=10, seen_cap=10, pending_cap=100)
    blocks = s.full_blocks(3)
    assert [[e["item_id"] for e in b] for b in blocks] == [["a", "b", "c"], ["d", "e", "f"]]
    assert [e["offset"] for e in blocks[1]] == [3, 4, 5]
    s.record_summary("The user appears to have a preference for x.", 3)
    s.record_summary("The user appears to have a preference for y.", 3)
    assert s.summary_version == 2 and s.summary.endswith("y.")
    assert [e["item_id"] for e in s.pending_block] == ["g"] and s.full_blocks(3) == []
