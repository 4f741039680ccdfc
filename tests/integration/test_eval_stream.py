"""`mmsr eval-stream` on the real broker with a log whose right answers are known."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from streams.harness.eval_stream import StreamEvalConfig, run

pytestmark = [pytest.mark.integration, pytest.mark.slow]

T0 = datetime(2021, 3, 1, tzinfo=timezone.utc)


def at(minutes: float) -> str:
    return (T0 + timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%SZ")


def known_log():
    """20 users take i0 then i1 (so i1 is i0's neighbour); 30 others make i2..i10 the most popular.
    In the test window, user x (who watched i11 before) takes i0 and then i1: the list emitted after
    i0 must have i1 first, where popularity ranks the nine popular items above it."""
    items = [{"item_id": f"i{n}", "title": f"Film {n}", "categories": ["Drama"], "event_time": at(0)}
             for n in range(14)]
    events, minute = [], 1.0
    for u in range(20):
        for item in ("i0", "i1"):
            events.append({"user_id": f"pair{u}", "item_id": item, "type": "click", "event_time": at(minute)})
            minute += 1
    for u in range(30):
        for n in range(2, 11):
            events.append({"user_id": f"fan{u}", "item_id": f"i{n}", "type": "click", "event_time": at(minute)})
            minute += 1
    events.append({"user_id": "x", "item_id": "i11", "type": "click", "event_time": at(minute)})
    backfill = len(events) + 1
    for item in ("i0", "i1"):
        minute += 1
        events.append({"user_id": "x", "item_id": item, "type": "click", "event_time": at(minute)})
    return items, events, backfill


def test_each_scored_event_is_scored_against_the_list_emitted_before_it(kafka_broker, tmp_path):
    items, events, backfill = known_log()
    config = StreamEvalConfig(test_fraction=2 / len(events), sequential=False)
    result = run(config, tmp_path / "out", items, events, bootstrap=kafka_broker.bootstrap, log=lambda *_: None)
    assert result["split"] == {"users": 51, "backfill_events": backfill - 1, "test_events": 2, "test_users": 1,
                               "scored_users": 1}
    assert result["popularity_7d"]["events"] == 2  # the recent-popularity row, scored at the same moments
    rows = [json.loads(line) for line in (tmp_path / "out" / "events.jsonl").read_text().splitlines()]
    assert [(r["user_id"], r["item_id"]) for r in rows] == [("x", "i0"), ("x", "i1")]
    first, second = rows
    assert first["list_interaction_count"] == 1  # the backfill-end list: x's one earlier interaction
    assert second["list_interaction_count"] == 2  # the list that reflects i0, not an older one
    assert second["stream_rank"] == 1 and second["strategy"] == "blend"
    assert 0 == second["popularity_rank"] or second["popularity_rank"] > 9
    assert result["events_scored"] == 2 and result["events_without_list"] == 0
    assert result["stream"]["HR@10"] >= 0.5 and result["stream"]["MRR@10"] >= 0.5
    assert result["popularity"]["MRR@10"] < result["stream"]["MRR@10"]
    assert (tmp_path / "out" / "results.md").read_text().startswith("# mmsr eval-stream")


def test_the_reranker_in_the_loop_with_collab_tokens_and_a_checked_sequential_model(kafka_broker, tmp_path):
    """A tiny LLaVA captions the catalog, summarizes the backfill and re-ranks (collaborative tokens
    from a SASRec trained on the backfill only, fused score): the scored lists after the first test
    event are re-ranked ones, and the candidate stage's order of the same lists is scored beside them."""
    from models import registry
    from models.config import SASRecConfig
    from models.candidates.sequences import sequences_of
    from models.candidates.sequential import SequentialRetriever
    from tests.adapters import fusion_of, make_collab_adapter

    items, events, backfill = known_log()
    extra = [{"user_id": "x", "item_id": item, "type": "click", "event_time": at(2000 + n)}
             for n, item in enumerate(("i12", "i13"))]  # x: three backfill items, one summary block
    events = events[:backfill - 1] + extra + [{**e, "event_time": at(3000 + n)}
                                              for n, e in enumerate(events[backfill - 1:])]
    split_events = events[:backfill + 1]
    sasrec = SequentialRetriever.train(sequences_of(split_events), SASRecConfig(hidden=16, blocks=1, max_len=8,
                                                                               epochs=2),
                                       data={"until": split_events[-1]["event_time"]})
    sasrec.save_pretrained(tmp_path / "sasrec")
    make_collab_adapter(tmp_path / "adapter", "loop-1", 1, sasrec, fusion_of(1.0, 0.5), base=registry.TINY_LLAVA)
    config = StreamEvalConfig(test_fraction=2 / len(events), sequential_model=str(tmp_path / "sasrec"),
                              reranker=str(tmp_path / "adapter"), llm=registry.TINY_LLAVA)
    result = run(config, tmp_path / "out", items, events, bootstrap=kafka_broker.bootstrap, log=lambda *_: None,
                 worker_settings={"summary_max_new_tokens": 4, "caption_max_new_tokens": 4, "rerank_candidates": 8})
    rows = [json.loads(line) for line in (tmp_path / "out" / "events.jsonl").read_text().splitlines()]
    assert [(r["user_id"], r["item_id"]) for r in rows] == [("x", "i0"), ("x", "i1")]
    assert rows[1]["strategy"] == "rerank" and rows[1]["list_interaction_count"] == 4
    # the harness reads the counters as the last test event goes out: every event before it is applied
    assert result["strategies"]["rerank"] >= 0.5 and result["worker_counters"]["events_applied_total"] >= len(events) - 1
    assert result["worker_settings"]["recommender_adapter"] == str((tmp_path / "adapter").resolve())
    # captions on, as the adapter was trained, and written for the whole catalog before the backfill
    assert result["worker_settings"]["caption_model"] == registry.TINY_LLAVA
    assert result["worker_counters"]["captions_total"] >= len(items)
    # the re-ranked list holds the candidate stage's top 8 in another order: a hit in one is a hit in the other
    assert all((r["stream_rank"] > 0) == (r["candidate_stage_rank"] > 0) for r in rows)
    assert result["candidate_stage"]["events"] == result["stream"]["events"] == 2

    # a sequential model that has seen the test window is refused before anything runs
    leaky = SequentialRetriever.train(sequences_of(events), SASRecConfig(hidden=16, blocks=1, max_len=8, epochs=1),
                                      data={"until": events[-1]["event_time"]})
    leaky.save_pretrained(tmp_path / "leaky")
    with pytest.raises(ValueError, match="after the test window's start"):
        run(StreamEvalConfig(test_fraction=2 / len(events), sequential_model=str(tmp_path / "leaky")),
            tmp_path / "out2", items, events, bootstrap=kafka_broker.bootstrap, log=lambda *_: None)
