"""The state and llm roles' halves, driven without a broker: requests out, versioned answers in."""
from __future__ import annotations

from streams.stages.interactions import InteractionsStage, SummaryResultsStage
from streams.stages.items import ItemsStage
from streams.stages.llm import RerankRequestsStage, SummaryRequestsStage
from tests.unit.test_stages import FakeModels, FakeSummarizer, events, interaction, item, make_services, run


def sent(services, topic):
    return [v for t, _, v in services.publisher.sent if t == topic]


def state_role(**settings):
    services = make_services(role="state", summary_model="smollm2-135m-instruct", summary_block=3, **settings)
    run(ItemsStage(services).process(events("items", [item(i) for i in range(12)], "item_id")))
    return services


def test_the_state_role_asks_for_a_summary_once_per_outstanding_request():
    services = state_role()
    stage = InteractionsStage(services)
    run(stage.process(events("interactions", [interaction("u1", f"i{i}") for i in range(4)], "user_id")))
    [request] = sent(services, "summary_requests")
    assert request["base_version"] == 0 and request["summary"] is None and request["covered"] == 0
    assert [e["item_id"] for e in request["blocks"][0]["entries"]] == ["i0", "i1", "i2"]
    assert all("Title" in text for text in request["blocks"][0]["texts"])  # the summarizer's own inputs
    assert sent(services, "user_summaries") == []  # the state role writes no summary itself
    run(stage.process(events("interactions", [interaction("u1", f"i{i}") for i in range(4, 7)], "user_id", start=4)))
    assert len(sent(services, "summary_requests")) == 1  # one is out: the next waits for its answer
    assert services.user_state.anywhere()["u1"]["summary_requested"] == 1


def test_summaries_apply_in_version_order_and_a_redelivery_never_moves_one_back():
    services = state_role()
    interactions = InteractionsStage(services)
    run(interactions.process(events("interactions", [interaction("u1", f"i{i}") for i in range(7)], "user_id")))
    [request] = sent(services, "summary_requests")
    assert len(request["blocks"]) == 2
    llm = make_services(FakeModels(summarizer=FakeSummarizer()), summary_block=3)
    run(SummaryRequestsStage(llm).process(events("summary-requests", [request], "user_id")))
    answers = sent(llm, "user_summaries")
    assert [a["summary_version"] for a in answers] == [1, 2] and answers[1]["interaction_count"] == 6
    results = SummaryResultsStage(interactions)
    run(results.process(events("user-summaries", answers[1:], "user_id")))  # block 2 before block 1: not applied
    assert services.user_state.anywhere()["u1"]["summary_version"] == 0
    run(results.process(events("user-summaries", answers, "user_id", start=1)))
    state = services.user_state.anywhere()["u1"]
    assert state["summary_version"] == 2 and state["summary"] == answers[1]["summary"]
    assert [e["item_id"] for e in state["pending_block"]] == ["i6"]
    run(results.process(events("user-summaries", answers, "user_id", start=3)))  # redelivered: skipped
    assert services.user_state.anywhere()["u1"]["summary_version"] == 2 and services.user_state.anywhere()["u1"]["summary"] == answers[1]["summary"]
    assert services.metrics.get("summaries_skipped_total", reason="not newer") == 2


def test_an_answered_request_lets_the_next_blocks_go_out():
    services = state_role()
    interactions = InteractionsStage(services)
    run(interactions.process(events("interactions", [interaction("u1", f"i{i}") for i in range(3)], "user_id")))
    run(interactions.process(events("interactions", [interaction("u1", f"i{i}") for i in range(3, 6)], "user_id", start=3)))
    [first] = sent(services, "summary_requests")
    llm = make_services(FakeModels(summarizer=FakeSummarizer()), summary_block=3)
    run(SummaryRequestsStage(llm).process(events("summary-requests", [first], "user_id")))
    run(SummaryResultsStage(interactions).process(events("user-summaries", sent(llm, "user_summaries"), "user_id")))
    first_answer, second = sent(llm, "user_summaries")[0], sent(services, "summary_requests")[1]
    assert second["base_version"] == 1 and second["summary"] == first_answer["summary"]
    assert [e["item_id"] for e in second["blocks"][0]["entries"]] == ["i3", "i4", "i5"]


class FakeReranker:
    class lm:
        name = "fake-lm"

    version = "v1"
    fusion = collab = None

    def __init__(self):
        self.seen = []

    def score(self, requests):
        # prefers higher item numbers: the opposite of the candidate order below
        self.seen += requests
        return [[float(c.item_id[1:]) for c in r.candidates] for r in requests], self


def test_the_llm_role_reranks_from_the_request_alone():
    services = state_role(recommender_model="smollm2-135m-instruct", rerank_candidates=5, top_k=3)
    from streams.events import Trigger
    from streams.stages.recommendations import RecommendationsStage
    from streams.state import UserState

    state = UserState("u1", interaction_count=4, summary="Likes drama.", summary_version=1,
                      history=[{"item_id": "i0", "type": "click", "event_time": NOW_EVENT}], seen=["i0"])
    _, hits, features = RecommendationsStage(services).candidates([state], 5)[0]
    assert len(hits) == 5 == len(features) and all(set(f) == {"cooccurrence", "log_popularity"} for f in features)
    trigger = Trigger("interactions", 0, 3, NOW_EVENT, "interaction", None)
    request = RecommendationsStage(services).rerank_request(state, trigger, hits, features)
    assert {"title", "caption", "features"} <= set(request["candidates"][0]) and request["summary"] == "Likes drama."
    assert request["history"] == ["i0"]  # what collaborative tokens read, in the request: the llm role has no state
    reranker = FakeReranker()
    llm = make_services(FakeModels(reranker=reranker), top_k=3)
    run(RerankRequestsStage(llm).process(events("rerank-requests", [request], "user_id")))
    [rec] = llm.publisher.lists
    assert rec["strategy"] == "rerank" and rec["user_id"] == "u1" and rec["summary_version"] == 1
    ids = [int(i["item_id"][1:]) for i in rec["items"]]
    assert ids == sorted(ids, reverse=True) and len(ids) == 3 and rec["trigger"]["offset"] == 3
    assert reranker.seen[0].history == ("i0",) and rec["scoring"] == "llm"


NOW_EVENT = "2099-01-01T00:00:00Z"


def test_captions_written_by_the_llm_role_are_applied_by_the_state_role_like_role_alls():
    from models.llm.captioner import Caption, degenerate_reason
    from streams.stages.items import CaptionResultsStage, CaptionsStage

    services = make_services(role="state", caption_model="smollm2-135m-instruct")
    run(ItemsStage(services).process(events("items", [item(0), item(1)], "item_id")))
    requests = sent(services, "caption_requests")
    text_vector = services.catalog.index.vector("i0").copy()

    llm = make_services(FakeModels(captioner=object()), role="llm")
    writer = CaptionsStage(llm)
    good = "A tense courtroom drama about a jury that must agree on a verdict."
    writer.caption = lambda batch: [Caption(good, "text"), Caption("noir " * 12, "text", None,
                                                                   degenerate_reason("noir " * 12))]
    run(writer.publish(events("caption-requests", requests, "item_id")))
    assert llm.item_profiles == {}  # the llm role writes no table
    run(CaptionResultsStage(CaptionsStage(services)).process(events("captions", sent(llm, "captions"), "item_id")))
    first, second = services.item_profiles["i0"], services.item_profiles["i1"]
    assert first["caption"] == good and good in first["text"] and first["caption_pending"] is False
    assert not (services.catalog.index.vector("i0") == text_vector).all()  # re-embedded with the caption
    assert second["caption_rejected"].startswith("a word repeated") and "noir" not in second["text"]
    run(CaptionResultsStage(CaptionsStage(services)).process(events("captions", [{"item_id": "i0"}], "item_id")))
    _, error_class, message = services.publisher.dead[-1]  # a bad record is dead-lettered, not fatal
    assert error_class == "SchemaError" and "'request' is a required property" in message


def test_malformed_requests_to_the_llm_role_are_dead_lettered_with_the_field_named():
    """A state worker of another version (or a hand-written request) used to raise out of the
    llm agent: only user_id was checked, then KeyError on blocks, partition or a candidate's item_id,
    and TypeError from Trigger.from_state on a key it did not know."""
    import copy

    services = state_role(recommender_model="smollm2-135m-instruct", rerank_candidates=5, top_k=3)
    interactions = InteractionsStage(services)
    run(interactions.process(events("interactions", [interaction("u1", f"i{i}") for i in range(4)], "user_id")))
    [good] = sent(services, "summary_requests")
    no_blocks = {k: v for k, v in good.items() if k != "blocks"}
    no_partition = {k: v for k, v in good.items() if k != "partition"}
    bad_entry = copy.deepcopy(good)
    del bad_entry["blocks"][0]["entries"][0]["offset"]
    llm = make_services(FakeModels(summarizer=FakeSummarizer()), summary_block=3)
    run(SummaryRequestsStage(llm).process(events("summary-requests", [no_blocks, good, no_partition, bad_entry],
                                                 "user_id")))
    assert [a["summary_version"] for a in sent(llm, "user_summaries")] == [1]  # the good one was answered
    assert [(cls, message) for _, cls, message in llm.publisher.dead] == [
        ("SchemaError", "summary_request (root): 'blocks' is a required property"),
        ("SchemaError", "summary_request (root): 'partition' is a required property"),
        ("SchemaError", "summary_request blocks/0/entries/0: 'offset' is a required property")]

    from streams.events import Trigger
    from streams.stages.recommendations import RecommendationsStage
    from streams.state import UserState

    state = UserState("u1", interaction_count=4, summary="Likes drama.", summary_version=1, seen=["i0"],
                      history=[{"item_id": "i0", "type": "click", "event_time": NOW_EVENT}])
    _, hits, features = RecommendationsStage(services).candidates([state], 5)[0]
    request = RecommendationsStage(services).rerank_request(
        state, Trigger("interactions", 0, 3, NOW_EVENT, "interaction", None), hits, features)
    no_item_id = copy.deepcopy(request)
    del no_item_id["candidates"][2]["item_id"]
    newer_trigger = copy.deepcopy(request)  # a newer state worker's trigger with a field this one lacks
    newer_trigger["trigger"]["broker_partition_leader"] = 7
    llm = make_services(FakeModels(reranker=FakeReranker()), top_k=3)
    run(RerankRequestsStage(llm).process(events("rerank-requests", [no_item_id, newer_trigger], "user_id")))
    assert [rec["user_id"] for rec in llm.publisher.lists] == ["u1"]  # the newer trigger is served
    assert [(cls, message) for _, cls, message in llm.publisher.dead] == [
        ("SchemaError", "rerank_request candidates/2: 'item_id' is a required property")]


def test_a_summary_applied_while_its_request_is_acknowledged_loses_no_interaction_applied_meanwhile():
    """Found by the soak test (tests/integration/test_soak.py): the summary-results stage read a
    user's state, awaited the broker's ack of the next summary request (slow after a broker
    restart) and then wrote back the state it had read, over the interactions the interactions
    stage had applied meanwhile. Two interactions of a user were lost that way."""
    import asyncio

    services = state_role()
    interactions = InteractionsStage(services)
    run(interactions.process(events("interactions", [interaction("u1", f"i{i}") for i in range(3)], "user_id")))
    [first] = sent(services, "summary_requests")
    run(interactions.process(events("interactions", [interaction("u1", f"i{i}") for i in range(3, 6)], "user_id",
                                    start=3)))
    llm = make_services(FakeModels(summarizer=FakeSummarizer()), summary_block=3)
    run(SummaryRequestsStage(llm).process(events("summary-requests", [first], "user_id")))
    [answer] = sent(llm, "user_summaries")

    async def scenario():
        gate = asyncio.Event()
        send = services.publisher.send

        async def slow_requests(topic, key, value, partition=None):
            done = await send(topic, key, value, partition)
            if topic != "summary_requests":
                return done
            acked = asyncio.get_running_loop().create_future()
            gate_wait = asyncio.ensure_future(gate.wait())
            gate_wait.add_done_callback(lambda _: acked.set_result(None))
            return acked

        services.publisher.send = slow_requests
        results = asyncio.ensure_future(SummaryResultsStage(interactions).process(
            events("user-summaries", [answer], "user_id")))
        for _ in range(5):
            await asyncio.sleep(0)
        assert not results.done()  # waiting for the next request's ack
        more = asyncio.ensure_future(interactions.process(
            events("interactions", [interaction("u1", "i6")], "user_id", start=6)))
        for _ in range(5):
            await asyncio.sleep(0)
        gate.set()
        await asyncio.gather(results, more)

    asyncio.run(scenario())
    state = services.user_state.anywhere()["u1"]
    assert state["interaction_count"] == 7 and state["summary_version"] == 1
    assert [h["item_id"] for h in state["history"]][-1] == "i6"
