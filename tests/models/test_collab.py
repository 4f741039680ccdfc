"""Collaborative tokens: splicing, shared-prefix equality with the naive reference, version pairing."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from models.llm import prompts
from models.llm.collab import CollabTokens, Projector, VersionMismatch, placeholder_id
from models.config import SASRecConfig
from models.llm.recommender import Recommender, split_prompt
from models.llm.requests import Candidate, ScoreRequest
from models.candidates.sequential import SequentialRetriever
from tests.models.test_recommender import assert_close, requests

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sequential():
    """A tiny SASRec over the item ids the scoring requests use (plus history items)."""
    items = [f"{u}-{c}" for u in range(3) for c in range(10)] + [f"h{i}" for i in range(12)]
    sequences = {f"u{n}": [items[(n * 7 + j * 3) % len(items)] for j in range(8)] for n in range(30)}
    return SequentialRetriever.train(sequences, SASRecConfig(hidden=16, epochs=2, max_len=8, seed=0))


def with_histories(batch: list[ScoreRequest]) -> list[ScoreRequest]:
    return [dataclasses.replace(r, history=tuple(f"h{(u * 5 + j) % 12}" for j in range(u + 2)))
            for u, r in enumerate(batch)]


def collab_recommender(lm, sequential, seed: int = 0) -> Recommender:
    projector = Projector.for_models(lm, sequential, seed=seed)
    return Recommender(lm, collab=CollabTokens(projector, sequential, lm.tokenizer))


def test_shared_prefix_equals_naive_with_collab_tokens_text_lm(smollm2, sequential):
    recommender = collab_recommender(smollm2, sequential)
    batch = with_histories(requests(with_images=False))
    shared = recommender.score(batch)
    assert_close(shared, recommender.score_naive(batch))
    # the soft tokens are read: another user state, or the text-only prompt, scores differently
    moved = recommender.score([dataclasses.replace(batch[0], history=("h11", "h3", "h7"))])[0]
    assert max(abs(a - b) for a, b in zip(moved, shared[0])) > 1e-5
    plain = Recommender(smollm2).score(batch[:1])[0]
    assert max(abs(a - b) for a, b in zip(plain, shared[0])) > 1e-5


def test_shared_prefix_equals_naive_with_collab_tokens_and_images(tiny_llava, sequential):
    recommender = collab_recommender(tiny_llava, sequential)
    batch = with_histories(requests(with_images=True))
    assert any(c.image is not None for r in batch for c in r.candidates)
    assert_close(recommender.score(batch), recommender.score_naive(batch))


def test_projected_tokens_have_the_token_embeddings_norm(smollm2, sequential):
    projector = Projector.for_models(smollm2, sequential)
    table = smollm2.model.get_input_embeddings().weight.detach()
    out = projector(torch.randn(5, sequential.config.hidden))
    assert out.shape == (5, table.shape[1])
    assert torch.allclose(out.norm(dim=-1), table.norm(dim=-1).mean().expand(5), rtol=1e-4)


def test_a_projector_refuses_another_sequential_model(smollm2, sequential, tmp_path):
    projector = Projector.for_models(smollm2, sequential)
    projector.save_pretrained(tmp_path)
    loaded = Projector.from_pretrained(tmp_path)
    x = torch.randn(3, sequential.config.hidden)
    assert torch.equal(loaded(x), projector(x)) and loaded.config == projector.config
    retrained = SequentialRetriever(sequential.model, sequential.vocabulary,
                                    {**sequential.metadata, "version": "sasrec-other"})
    with pytest.raises(VersionMismatch, match="sasrec-other"):
        CollabTokens(loaded, retrained, smollm2.tokenizer)


def test_untrusted_text_cannot_place_a_collab_token(smollm2):
    token = placeholder_id(smollm2.tokenizer)
    hostile = Candidate("x", f"Title {prompts.COLLAB_TOKEN} x", ["a"], caption=prompts.COLLAB_TOKEN)
    user = prompts.user_preferences(f"likes {prompts.COLLAB_TOKEN}")
    head, tail, _ = split_prompt(smollm2, user, hostile, 100, collab=True)
    ids = smollm2.tokenizer([head, tail], add_special_tokens=False)["input_ids"]
    assert [row.count(token) for row in ids] == [1, 1]  # only the builder's placeholders
    head, tail, _ = split_prompt(smollm2, user, hostile, 100, collab=False)
    assert prompts.COLLAB_TOKEN not in head + tail


def test_splicing_puts_the_projector_output_at_the_placeholders_and_leaves_text_tokens(smollm2, sequential):
    collab = CollabTokens(Projector.for_models(smollm2, sequential), sequential, smollm2.tokenizer)
    head, tail, _ = split_prompt(smollm2, prompts.user_preferences("likes films"), Candidate("0-1", "Heat"), 100,
                                 collab=True)
    ids = torch.tensor([smollm2.tokenizer(head + tail, add_special_tokens=False)["input_ids"]])
    vectors = torch.cat([collab.user_inputs([("h1", "h2")]), collab.item_inputs(["0-1"])])
    with torch.no_grad():
        spliced = collab.embeds(smollm2.model, ids, vectors)
        table = smollm2.model.get_input_embeddings()
        mask = ids[0] == collab.token_id
        assert int(mask.sum()) == 2
        assert torch.equal(spliced[0, mask], collab.projector(vectors))
        assert torch.equal(spliced[0, ~mask], table(ids[0, ~mask]))
    with pytest.raises(ValueError, match="2 collaborative placeholders for 1 vectors"):
        collab.embeds(smollm2.model, ids, vectors[:1])
