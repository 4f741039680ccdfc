"""The stages driven without a broker: plain dicts for tables, a recording publisher, fake models.

Each test here pins a defect of the single-class worker (df091ed): one bad input took its whole
batch down, new items waited for their caption, degenerate captions went into embeddings,
popularity counted any id.
"""
from __future__ import annotations

import asyncio
import json

import numpy as np
import pydantic
import pytest

from models.llm.captioner import Caption, degenerate_reason
from streams.metrics import Metrics
from streams.services import Services
from streams.settings import Settings
from streams.stages.interactions import InteractionsStage
from streams.stages.items import CaptionsStage, ItemsStage
from streams.stages.neighbours import NeighboursStage
from streams.stages.recommendations import RecommendationsStage

NOW = "2099-01-01T00:00:00Z"  # always within the freshness window


class Message:
    def __init__(self, topic, partition, offset, key, value, headers=None):
        self.topic, self.partition, self.offset, self.key, self.value = topic, partition, offset, key, value
        self.headers, self.timestamp = headers or [], 1000.0


class Event:
    def __init__(self, message):
        self.message = message


def events(topic, records, key_field, partition=0, start=0):
    return [Event(Message(topic, partition, start + n, r[key_field].encode(), json.dumps(r).encode()))
            for n, r in enumerate(records)]


class RecordingPublisher:
    def __init__(self):
        self.dead, self.sent, self.lists, self.partitions = [], [], [], []
        self.last_recommendations = {}

    async def dead_letter(self, message, error_class, error_message):
        self.dead.append((message.key, error_class, error_message))

    async def send(self, topic, key, value, partition=None):
        self.sent.append((topic, key, value))
        self.partitions.append(partition)
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def recommendations(self, recs):
        self.lists += recs


class HashEmbedder:
    """Deterministic vectors from text; raises on a poisoned text, as a model can on a bad input."""

    dim = 8

    def __init__(self):
        self.calls = []

    def embed(self, texts, batch_size=64):
        self.calls.append(list(texts))
        if any("POISON" in t for t in texts):
            raise ValueError("the tokenizer rejects this input")
        out = np.stack([np.random.default_rng(abs(hash(t)) % 2**32).normal(size=self.dim) for t in texts])
        return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


class FakeSummarizer:
    def __init__(self):
        self.batches = []

    def recurrent(self, histories, previous, on_step=None):
        self.batches.append(len(histories))
        if any("JINX" in text for h in histories for text in h):
            raise RuntimeError("generation failed")
        return [[f"The user appears to have a preference for {len(h)} items."] * (len(h) // 3) for h in histories]


class FakeModels:
    def __init__(self, captioner=None, summarizer=None, reranker=None):
        self.embedder = HashEmbedder()
        self.captioner, self.summarizer, self.reranker = captioner, summarizer, reranker
        self.sequential = None

    def embed(self, texts):
        return self.embedder.embed(texts)


def make_services(models=None, **settings) -> Services:
    # the settings name a model where the fakes provide one, as in a worker that loaded it
    named = {setting: "fake" if getattr(models, attr, None) is not None else "none" for setting, attr in
             (("caption_model", "captioner"), ("summary_model", "summarizer"), ("recommender_model", "reranker"))}
    s = Settings(**{**named, **settings})
    services = Services(s, {}, {}, RecordingPublisher(), Metrics(), models or FakeModels())
    services.catalog._journal = None
    from models.candidates.retrieval import CatalogIndex

    services.catalog.index = CatalogIndex(HashEmbedder.dim)
    services.restored.set()
    return services


def item(i, **extra):
    return {"item_id": f"i{i}", "title": f"Title {i}", "categories": ["Drama"], "event_time": NOW, "op": "upsert",
            **extra}


def run(coro):
    return asyncio.run(coro)


def test_an_item_that_fails_to_embed_is_dead_lettered_and_the_rest_of_its_batch_applied():
    services = make_services()
    batch = [item(0), item(1, title="POISON pill"), item(2), item(3)]
    run(ItemsStage(services).process(events("items", batch, "item_id")))
    assert sorted(services.item_profiles) == ["i0", "i2", "i3"]
    assert all(f"i{i}" in services.catalog for i in (0, 2, 3)) and "i1" not in services.catalog
    [(key, error_class, message)] = services.publisher.dead
    assert key == b"i1" and error_class == "EmbeddingFailed" and "rejects this input" in message
    assert services.metrics.get("items_applied_total") == 3


def test_a_new_item_is_recommendable_while_its_caption_is_pending_then_re_embedded_with_it():
    services = make_services(FakeModels(captioner=object()))
    run(ItemsStage(services).process(events("items", [item(0), item(1)], "item_id")))
    profile = services.item_profiles["i0"]
    assert "i0" in services.catalog and profile["caption_pending"] is True and "caption" not in profile
    requests = [v for topic, _, v in services.publisher.sent if topic == "caption_requests"]
    assert [r["item_id"] for r in requests] == ["i0", "i1"] and requests[0]["content_hash"] == profile["content_hash"]
    text_vector = services.catalog.index.vector("i0").copy()

    good = "A tense courtroom drama about a jury that must agree on a verdict."
    captions = CaptionsStage(services)
    captions.caption = lambda batch: [Caption(good, "text"), Caption("noir " * 12, "text", None,
                                                                        degenerate_reason("noir " * 12))]
    run(captions.process(events("caption-requests", requests, "item_id")))
    first, second = services.item_profiles["i0"], services.item_profiles["i1"]
    assert first["caption"] == good and good in first["text"] and first["caption_pending"] is False
    assert not np.allclose(services.catalog.index.vector("i0"), text_vector)  # re-embedded with the caption
    assert second["caption_rejected"].startswith("a word repeated") and "noir" not in second["text"]
    assert services.metrics.get("captions_rejected_total") == 1 and services.metrics.get("captions_applied_total") == 1


def test_a_caption_for_content_that_changed_meanwhile_is_dropped():
    services = make_services(FakeModels(captioner=object()))
    stage = ItemsStage(services)
    run(stage.process(events("items", [item(0)], "item_id")))
    old_request = [v for t, _, v in services.publisher.sent if t == "caption_requests"][0]
    run(stage.process(events("items", [item(0, title="Retitled")], "item_id", start=1)))
    captions = CaptionsStage(services)
    captions.caption = lambda batch: [Caption("A film about an old title that nobody remembers now.", "text")]
    run(captions.process(events("caption-requests", [old_request], "item_id")))
    assert "caption" not in services.item_profiles["i0"] and services.metrics.get("captions_outdated_total") == 1


@pytest.mark.parametrize("text, degenerate", [
    ("The item is a noir noir noir noir film", True),
    ("ok", True),
    ("a film a film a film a film a film a film a film a film", True),
    ("A quiet drama about two brothers who run a diner in a small town.", False),
])
def test_degenerate_captions_are_recognised(text, degenerate):
    assert (degenerate_reason(text) is not None) == degenerate


def interaction(user, item_id, event_time=NOW):
    return {"user_id": user, "item_id": item_id, "type": "click", "event_time": event_time}


def test_one_failing_summarizer_input_fails_alone():
    summarizer = FakeSummarizer()
    services = make_services(FakeModels(summarizer=summarizer))
    run(ItemsStage(services).process(events("items", [item(i) for i in range(6)] + [item(9, title="JINX")],
                                            "item_id")))
    batch = [interaction("u1", f"i{i}") for i in range(3)] + [interaction("u2", i) for i in ("i3", "i9", "i4")]
    run(InteractionsStage(services).process(events("interactions", batch, "user_id")))
    ok, failed = services.user_state.anywhere()["u1"], services.user_state.anywhere()["u2"]
    assert ok["summary_version"] == 1 and ok["pending_block"] == []
    assert failed["summary_version"] == 0 and len(failed["pending_block"]) == 3  # retried with the next event
    assert failed["interaction_count"] == 3  # the interactions themselves are applied
    assert services.metrics.get("summary_failures_total") == 1
    assert summarizer.batches == [2, 1, 1]  # the batch, then each half
    assert [v["user_id"] for t, _, v in services.publisher.sent if t == "user_summaries"] == ["u1"]


def fold_pairs(services) -> None:
    """Deliver what the interactions stage sent on item-pairs to the neighbours stage (as the topic would)."""
    publisher = services.publisher
    sent = [(k, v, p or 0) for (t, k, v), p in zip(publisher.sent, publisher.partitions) if t == "item_pairs"]
    kept = [(row, p) for row, p in zip(publisher.sent, publisher.partitions) if row[0] != "item_pairs"]
    publisher.sent, publisher.partitions = [row for row, _ in kept], [p for _, p in kept]
    run(NeighboursStage(services).process([Event(Message("item-pairs", p, n, k.encode(), wire(v)))
                                           for n, (k, v, p) in enumerate(sent)]))


def wire(value) -> bytes:
    """A value as the topic carries it: binary item-pairs messages as sent, JSON for the rest."""
    return value if isinstance(value, bytes) else json.dumps(value).encode()


def test_popularity_counts_catalog_items_only_and_repeats_do_not_refill_the_block():
    services = make_services()
    run(ItemsStage(services).process(events("items", [item(0), item(1)], "item_id")))
    batch = [interaction("u1", "i0"), interaction("u1", "ghost"), interaction("u1", "i0"), interaction("u2", "i0")]
    run(InteractionsStage(services).process(events("interactions", batch, "user_id")))
    fold_pairs(services)
    assert services.item_stats.counts == {"i0": 3}
    state = services.user_state.anywhere()["u1"]
    assert state["interaction_count"] == 3 and [e["item_id"] for e in state["pending_block"]] == ["i0", "ghost"]


@pytest.mark.parametrize("name", ["history_tail", "seen_cap", "top_k", "summary_block", "rerank_candidates"])
def test_settings_that_would_delete_nothing_or_everything_are_refused(name):
    with pytest.raises(pydantic.ValidationError, match=name):
        Settings(**{name: 0})


def test_an_owed_list_stays_in_state_until_published_and_a_newer_trigger_is_kept():
    services = make_services(debounce_seconds=0.0)
    run(ItemsStage(services).process(events("items", [item(i) for i in range(4)], "item_id")))
    interactions = InteractionsStage(services)
    run(interactions.process(events("interactions", [interaction("u1", "i0")], "user_id")))
    assert services.user_state.anywhere()["u1"]["owed"]["offset"] == 0  # recorded with the state, before any list
    recommendations = RecommendationsStage(services)
    # a newer interaction lands while the first list is being built: its trigger must survive the clear
    original = recommendations.candidates

    def slow_candidates(states, k):
        out = original(states, k)
        state = services.user_state.anywhere()["u1"]
        services.user_state.at(0)["u1"] = {**state, "owed": {**state["owed"], "offset": 1}}
        return out

    recommendations.candidates = slow_candidates
    assert run(recommendations.emit_due()) == 1
    assert services.user_state.anywhere()["u1"]["owed"]["offset"] == 1
    recommendations.candidates = original
    services.due.schedule("u1", 0.0)
    assert run(recommendations.emit_due()) == 1
    assert services.user_state.anywhere()["u1"]["owed"] is None
    assert [r["trigger"]["offset"] for r in services.publisher.lists] == [0, 1]
    assert "i0" not in [i["item_id"] for i in services.publisher.lists[0]["items"]]
    services.due.schedule("u1", 0.0)  # a stale schedule for a list already published emits nothing
    assert run(recommendations.emit_due()) == 0


def test_an_adapter_trained_on_other_text_lengths_is_reported():
    from streams.hosting import text_mismatches

    metadata = {"data": {"protocol": {"block": 3, "caption_tokens": 24, "summary_tokens": 64}}}
    served = Settings(caption_max_new_tokens=24, summary_max_new_tokens=256)
    assert text_mismatches(metadata, served) == ["summary_tokens: trained 64, served 256"]
    assert text_mismatches({}, served) == []
    # summaries written by another model than the adapter's base are part of what it was trained on
    other = {"data": {"protocol": {"block": 3, "summary_model": "qwen2.5-coder-0.5b-instruct"}}}
    assert text_mismatches(other, Settings(summary_model="smollm2-135m-instruct")) == [
        "summary_model: trained qwen2.5-coder-0.5b-instruct, served smollm2-135m-instruct"]
    assert text_mismatches({"data": {"protocol": {"summary_model": ""}}}, served) == []  # the base model wrote them


@pytest.mark.parametrize("pairs_format", ["binary", "json"])
def test_interactions_go_to_the_item_partitions_they_change_and_fold_as_per_item_increments_did(monkeypatch,
                                                                                              pairs_format):
    from aiokafka.partitioner import DefaultPartitioner

    from models.candidates.cooccurrence import apply_entries, decode_message, pair_entries
    from streams.stages import interactions as stage

    monkeypatch.setattr(stage, "PAIR_RECORDS_PER_MESSAGE", 40)  # several messages per partition
    services = make_services(item_partitions=3, cooc_window=4, pairs_format=pairs_format)
    run(ItemsStage(services).process(events("items", [item(i) for i in range(30)], "item_id")))
    # users interleaved, so the batch's source order differs from the order users are applied in
    batch = [interaction(f"u{n % 7}", f"i{(n * 11) % 30}") for n in range(120)] + [interaction("u1", "ghost")]
    run(InteractionsStage(services).process(events("interactions", batch, "user_id")))
    sent = [(v, p) for (t, k, v), p in zip(services.publisher.sent, services.publisher.partitions) if t == "item_pairs"]
    assert all(isinstance(v, bytes if pairs_format == "binary" else dict) for v, _ in sent)
    messages = [(decode_message(wire(v)), p) for v, p in sent]
    assert 3 < len(messages) <= 3 * 4 and all(len(v["pairs"]) <= 40 for v, _ in messages)
    # the reference: one entry per item an interaction changes, as one message per item carried them
    histories: dict[str, list[str]] = {}
    per_item: dict[str, list] = {}
    for offset, event in enumerate(batch[:-1]):
        previous = histories.setdefault(event["user_id"], [])
        for target, entry in pair_entries(previous[-4:], event["item_id"], 0, offset,
                                          stage.schemas.parse_time(NOW).timestamp(),
                                          services.settings.cooccurrence_config()).items():
            per_item.setdefault(target, []).append(entry)
            # each item's increment goes to the partition Kafka's default partitioner gives the item
            home = DefaultPartitioner()(target.encode(), [0, 1, 2], [0, 1, 2])
            sent = [r for v, p in messages if p == home for r in v["pairs"] if r[1] == offset]
            assert len(sent) == 1 and (target == event["item_id"] and sent[0][4] is not None
                                       or target in sent[0][5][0::2])
        previous.append(event["item_id"])
    assert services.metrics.get("pair_entries_total") == sum(map(len, per_item.values()))
    config = services.settings.cooccurrence_config()
    want = {i: apply_entries(None, e, config)[0] for i, e in per_item.items()}
    fold_pairs(services)
    assert services.neighbours == want and len(want) == 30
    assert services.metrics.get("pair_entries_applied_total") == services.metrics.get("pair_entries_total")


def pairs_records(*interactions, partitions=1):
    """``interaction_records`` of (offset, item, window) interactions from source partition 0, all to item partition 0."""
    from models.candidates.cooccurrence import interaction_records

    return [interaction_records(0, o, 100.0, item, window, partitions)[0][0] for o, item, window in interactions]


def pairs_event(offset: int, value: dict) -> Event:
    return Event(Message("item-pairs", 0, offset, b"pairs-0", json.dumps(value).encode()))


def test_redelivered_interactions_are_skipped_item_by_item():
    from models.candidates.cooccurrence import CooccurrenceConfig, pairs_message
    from streams.stages.neighbours import NeighboursStage as Stage

    services = make_services(item_partitions=1)
    first = pairs_records((5, "i1", ["i2", "i3"]), (6, "i2", ["i2", "i3", "i1"]))
    again = pairs_records((6, "i2", ["i2", "i3", "i1"]), (7, "i3", ["i3", "i1", "i2"]))  # after a crash
    for n, message in enumerate((first, again)):
        run(Stage(services).process([pairs_event(n, pairs_message(message, CooccurrenceConfig(decay=0.8)))]))
    assert services.neighbours["i1"]["count"] == 1 and services.neighbours["i2"]["count"] == 1
    assert services.neighbours["i3"]["count"] == 1
    # i1: i3 at distance 1 and i2 at 2 (its own interaction), i2 at 1 (o=6), i3 at 2 (o=7)
    assert services.neighbours["i1"]["neighbours"] == {"i3": 1.0 + 0.8, "i2": 0.8 + 1.0}
    assert services.metrics.get("pair_entries_skipped_total") == 3  # the second i2 interaction's targets


def test_pairs_are_weighed_by_the_messages_decay_as_the_weighted_layout_of_earlier_workers_was():
    """A topic written before the flat layout (``{"interactions"}``, a weight per pair) folds to
    the same records as the same interactions in ``pairs_message``."""
    from models.candidates.cooccurrence import CooccurrenceConfig, pairs_message, window_weights

    interactions = [(5, "i1", ["i2", "i3"]), (6, "i2", ["i2", "i3", "i1"]), (7, "i4", ["i1", "i2", "i3", "i1"])]
    # one item partition: the item's own pairs and the others' are the same (other, weight) list
    weighted = [[0, o, 100.0, item, pairs, pairs] for o, item, window in interactions
                for pairs in [[[other, w] for other, w in window_weights(window, item, 0.5)]]]
    flat, legacy = make_services(item_partitions=1), make_services(item_partitions=1)
    run(NeighboursStage(flat).process([pairs_event(0, pairs_message(pairs_records(*interactions),
                                                                     CooccurrenceConfig(decay=0.5)))]))
    run(NeighboursStage(legacy).process([pairs_event(0, {"interactions": weighted})]))
    assert flat.neighbours == legacy.neighbours
    # i4 after i1, i3, i2, i1 (newest last): i1 at distance 1, i3 at 2, i2 at 3; the older i1 is not counted
    assert flat.neighbours["i4"]["neighbours"] == {"i1": 1.0, "i3": 0.5, "i2": 0.25}


@pytest.mark.parametrize("bad_pair, header", [(["i1", "x"], {}), (["i1", -1], {}), (["i1", 7], {}), (["i1", 1.0], {}),
                                              (["i1", 2 ** 64 - 1], {}),
                                              (["i1", 1], {"window": 10 ** 9}), (["i1", 1], {"decay": 2.0}),
                                              (["i1", 1], {"window": "3"})],
                         ids=["text distance", "negative distance", "distance past the window", "float distance",
                              "a distance of 64 bits", "a huge window", "a decay above 1", "a window as text"])
def test_a_message_of_the_unpacked_layout_still_folds_and_a_malformed_one_is_dead_lettered_whole(bad_pair, header):
    from models.candidates.cooccurrence import CooccurrenceConfig, pairs_message

    def message(offset, records, **header):
        return pairs_event(offset, {**pairs_message(records, CooccurrenceConfig(decay=0.8, window=3)), **header})

    entry = {"p": 0, "o": 5, "t": 100.0, "c": 1, "n": {"i2": 1.0}}
    good = [pairs_event(0, {"item_id": "i1", "entries": [entry]}), message(2, pairs_records((7, "i3", ["i1", "i2"])))]
    # a valid interaction first, so the bad message changes records before it fails
    bad = message(1, pairs_records((6, "i2", ["i1"])) + [[0, 9, 100.0, "i4", None, bad_pair]], **header)
    services, reference = make_services(item_partitions=1), make_services(item_partitions=1)
    run(NeighboursStage(services).process([good[0], bad, good[1]]))
    run(NeighboursStage(reference).process(good))
    assert services.neighbours == reference.neighbours and services.neighbours["i1"]["count"] == 1
    assert services.neighbours["i1"]["neighbours"] == {"i2": 1.0, "i3": 0.8} and "i4" not in services.neighbours
    assert [(k, cls) for k, cls, _ in services.publisher.dead] == [(b"pairs-0", "MalformedPairs")]


def test_a_damaged_binary_message_is_dead_lettered_whole_and_the_rest_folds_as_json_would():
    from models.candidates.cooccurrence import CooccurrenceConfig, encode_pairs_message, pairs_message

    config = CooccurrenceConfig(decay=0.8, window=3)
    first, second = pairs_records((6, "i2", ["i1"])), pairs_records((7, "i3", ["i1", "i2"]))
    binary = [encode_pairs_message(records, config) for records in (first, second)]
    damaged = binary[0][:-3]  # cut short: its lengths no longer add up

    def event(offset, value):
        return Event(Message("item-pairs", 0, offset, b"pairs-0", value))

    services, reference = make_services(item_partitions=1), make_services(item_partitions=1)
    run(NeighboursStage(services).process([event(0, binary[0]), event(1, damaged), event(2, binary[1])]))
    run(NeighboursStage(reference).process([pairs_event(0, pairs_message(first, config)),
                                            pairs_event(2, pairs_message(second, config))]))
    assert services.neighbours == reference.neighbours and services.neighbours["i3"]["count"] == 1
    assert [(k, cls) for k, cls, _ in services.publisher.dead] == [(b"pairs-0", "MalformedPairs")]


def test_the_neighbours_stage_reads_back_what_it_stored_and_forgets_it_at_a_rebalance():
    """Records kept between batches (not read from the table again) give the same table as
    records read from the table every batch; ``forget`` (a revocation) drops them, and a batch
    that began before it keeps nothing."""
    from models.candidates.cooccurrence import CooccurrenceConfig, pairs_message

    config = CooccurrenceConfig(decay=0.8)
    batches = [pairs_records((5, "i1", ["i2", "i3"]), (6, "i2", ["i2", "i3", "i1"])),
               pairs_records((7, "i3", ["i3", "i1", "i2"]), (8, "i1", ["i1", "i2", "i3"])),
               pairs_records((9, "i2", ["i3", "i1"]))]
    kept, reread = make_services(item_partitions=1), make_services(item_partitions=1)
    keeping, rereading = NeighboursStage(kept), NeighboursStage(reread)
    for n, records in enumerate(batches):
        rereading.forget()
        for stage in (keeping, rereading):
            run(stage.process([pairs_event(n, pairs_message(records, config))]))
    assert kept.neighbours == reread.neighbours and kept.neighbours["i1"]["count"] == 2
    assert keeping.written == kept.neighbours and all(keeping.written[i] is kept.neighbours[i] for i in keeping.written)
    kept.neighbours["i1"] = {**kept.neighbours["i1"], "count": 41}  # another worker's write, after a rebalance
    assert keeping.stored("i1")["count"] == 2
    keeping.forget()
    assert keeping.written == {} and keeping.stored("i1")["count"] == 41

    class Revoking(dict):  # the table, where a revocation lands while the batch writes
        def __setitem__(self, key, value):
            super().__setitem__(key, value)
            keeping.forget()

    kept.neighbours = Revoking(kept.neighbours)
    run(keeping.process([pairs_event(3, pairs_message(pairs_records((10, "i3", ["i1"])), config))]))
    assert keeping.written == {}
