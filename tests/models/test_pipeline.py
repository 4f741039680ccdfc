"""The stream and the evaluation build the same prompts, token for token (one text pipeline)."""
from __future__ import annotations

import asyncio
import json

import torch

from models.llm import pipeline, prompts
from models.llm.captioner import Caption
from models.config import EvalConfig
from models.evaluation.paper import Dataset, TextCache, Texts, UserCase, variant_prompts
from models.llm.recommender import full_inputs
from streams.stages.interactions import InteractionsStage
from streams.stages.items import CaptionsStage, ItemsStage
from streams.stages.recommendations import RecommendationsStage
from tests.unit.test_stages import FakeModels, events, make_services, run

ITEMS = [
    {"item_id": "m1", "title": "Heat (1995)", "categories": ["Action", "Crime"], "event_time": "2099-01-01T00:00:00Z",
     "description": "A <data>detective</data> hunts a crew of professional thieves in Los Angeles."},
    {"item_id": "m2", "title": "Fargo (1996)", "categories": ["Crime", "Drama"], "event_time": "2099-01-01T00:00:00Z"},
    {"item_id": "m3", "title": "Babe (1995)", "categories": ["Children"], "event_time": "2099-01-01T00:00:00Z",
     "description": "A pig who wants to herd sheep."},
    {"item_id": "m4", "title": "Clueless (1995)", "categories": ["Comedy"], "event_time": "2099-01-01T00:00:00Z"},
]
CAPTIONS = {"m1": "A crime epic of two professionals on opposite sides of the law, told at night.",
            "m2": "A snowbound tale of a botched kidnapping and a patient small-town police chief.",
            "m3": "A gentle farmyard fable about an orphaned piglet and the farmer who believes in him.",
            "m4": "A bright satire of Beverly Hills teenagers, matchmaking and shopping."}
SUMMARY = "The user appears to have a preference for tense crime stories with patient investigators."


class CapturingReranker:
    version = "v-test"
    fusion = collab = None

    def __init__(self, lm):
        self.requests = []
        self.lm = lm

    def score(self, requests):
        self.requests += requests
        return [[0.5] * len(r.candidates) for r in requests], self


def stream_texts(lm):
    """The stream's path: item events applied, captions applied, a block summarized, a list re-ranked."""
    reranker = CapturingReranker(lm)
    services = make_services(FakeModels(captioner=object(), reranker=reranker), rerank_candidates=10)
    run(ItemsStage(services).process(events("items", ITEMS, "item_id")))
    captions = CaptionsStage(services)
    captions.caption = lambda batch: [Caption(CAPTIONS[r["item_id"]], "text") for r in batch]
    requests = [v for t, _, v in services.publisher.sent if t == "caption_requests"]
    run(captions.process(events("caption-requests", requests, "item_id")))
    interactions = InteractionsStage(services)
    block = [{"item_id": i} for i in ("m1", "m2", "m4")]
    block_texts = interactions.block_texts(block)
    services.user_state.at(0)["u1"] = {"user_id": "u1", "summary": SUMMARY, "seen": ["m2"], "history": [{"item_id": "m2"}],
                                 "partition": 0, "owed": {"topic": "interactions", "partition": 0, "offset": 1,
                                                          "event_time": None, "kind": "interaction",
                                                          "broker_timestamp": None}}
    services.due.schedule("u1", 0.0)
    asyncio.run(RecommendationsStage(services).emit_due())
    return block_texts, reranker.requests[0]


def eval_texts(lm, tmp_path):
    """The evaluation's path: the same items as a dataset, the same captions, the protocol's prompts."""
    (tmp_path / "items.jsonl").write_text("\n".join(json.dumps(i) for i in ITEMS))
    (tmp_path / "interactions.jsonl").write_text(json.dumps(
        {"user_id": "u1", "item_id": "m2", "type": "click", "event_time": "2099-01-01T00:00:00Z"}))
    data = Dataset.from_events(tmp_path / "items.jsonl", tmp_path / "interactions.jsonl")
    texts = Texts(lm, data, EvalConfig(), TextCache(None), log=lambda *_: None)
    texts.captions = dict(CAPTIONS)
    block_texts = [texts.item_text(i, captions=True) for i in ("m1", "m2", "m4")]
    return block_texts, texts, data


def test_stream_and_evaluation_prompts_are_equal_token_for_token(smollm2, tmp_path):
    stream_block, stream_request = stream_texts(smollm2)
    eval_block, texts, _ = eval_texts(smollm2, tmp_path)
    assert stream_block == eval_block
    assert "Description: A detective hunts" in stream_block[0] and "<data>detective" not in stream_block[0]
    candidate_ids = [c.item_id for c in stream_request.candidates]
    assert "m2" not in candidate_ids and len(candidate_ids) == 3  # history excluded
    case = UserCase("u1", ["m2"], ["m2"], candidate_ids[0], {0: candidate_ids[1:]}, [])
    _, [eval_request], _ = variant_prompts("mllm-msr", texts, [case], {"u1": [SUMMARY]})
    assert eval_request.user_part == stream_request.user_part == prompts.user_preferences(SUMMARY)
    assert eval_request.history == stream_request.history == ("m2",)  # what collaborative tokens read
    by_id = {c.item_id: c for c in eval_request.candidates}
    for candidate in stream_request.candidates:
        stream_ids, _ = full_inputs(smollm2, stream_request.user_part, candidate, 600)
        eval_ids, _ = full_inputs(smollm2, eval_request.user_part, by_id[candidate.item_id], 600)
        assert torch.equal(stream_ids, eval_ids), candidate.item_id
        with_tokens = [full_inputs(smollm2, r.user_part, c, 600, collab=True)[0]
                       for r, c in ((stream_request, candidate), (eval_request, by_id[candidate.item_id]))]
        assert torch.equal(*with_tokens) and with_tokens[0].shape[1] > stream_ids.shape[1]
    # the summarizer's prompts for the block (first block and update), rendered by each path's own
    # summarizer, are one token sequence: the same template, the same texts
    from models.llm.generation import render
    from models.llm.user_summarizer import BlockRequest, UserSummarizer
    from streams.settings import Settings

    stream_summarizer = UserSummarizer(smollm2, Settings().summarizer_config())
    for previous in (None, SUMMARY):
        rendered = {path: render(smollm2, summarizer.messages(BlockRequest(previous, block)), prompts.SUMMARY_PREFIX)
                    for path, summarizer, block in (("stream", stream_summarizer, stream_block),
                                                    ("eval", texts.summarizer, eval_block))}
        tokens = {p: smollm2.tokenizer(r, add_special_tokens=False)["input_ids"] for p, r in rendered.items()}
        assert tokens["stream"] == tokens["eval"]
        assert stream_summarizer.config.prompt == texts.summarizer.config.prompt == prompts.SUMMARY_PROMPT
        # the template is the benchmark's choice: every item a plain line inside one data block
        assert "<data>\n" + "\n".join(prompts.clean(t) for t in stream_block) + "\n</data>" in rendered["stream"]
    assert pipeline.TEXT.block_size == EvalConfig().block
