"""Serving adapters next to generation: captions and summaries keep the base weights, and a hot
swap never mixes two adapters in one scoring call."""
from __future__ import annotations

import threading
import time

import pytest

from models import registry
from models.llm.pipeline import preference_request
from models.llm.recommender import Recommender
from models.llm.requests import Candidate
from models.llm.serving import load_adapter
from models.llm.user_summarizer import SummarizerConfig, UserSummarizer
from streams.metrics import Metrics
from streams.hosting import Models
from streams.settings import Settings
from tests.adapters import make_adapter

pytestmark = pytest.mark.slow

HISTORY = [["Title: Heat (1995); Categories: Action, Crime", "Title: Fargo (1996); Categories: Crime, Drama",
            "Title: Clueless (1995); Categories: Comedy"]]


def test_with_an_adapter_loaded_summaries_come_from_the_base_weights(tmp_path):
    make_adapter(tmp_path / "adapter", "v1", seed=1, scale=0.1)  # strong enough to change greedy text
    # one dtype for the generator and the re-ranker, so only the adapter can make their texts differ
    settings = Settings(summary_model=registry.SMOLLM2, caption_model="none", recommender_model=registry.SMOLLM2,
                        recommender_adapter=str(tmp_path / "adapter"), summary_max_new_tokens=16, device="cpu",
                        generation_dtype="float32", data_dir=tmp_path)
    models = Models(settings, Metrics(), embedder=object())
    assert models.check_adapter() and models.reranker.version == "v1"
    served = models.summarizer.recurrent(HISTORY)
    base = UserSummarizer(registry.load(registry.SMOLLM2, device="cpu"), SummarizerConfig(max_new_tokens=16))
    assert served == base.recurrent(HISTORY)
    # what df091ed served: the summarizer over the adapted model writes something else
    through_adapter = UserSummarizer(models.reranker.recommender.lm, SummarizerConfig(max_new_tokens=16))
    assert through_adapter.recurrent(HISTORY) != served
    # and the adapter is really in use for scoring (it changes the scores)
    request = preference_request(served[0][-1], [Candidate("1", "Heat (1995)", ("Action",)),
                                                 Candidate("2", "Babe (1995)", ("Children",))])
    scores, recommender = models.reranker.score([request])
    base_scores = Recommender(registry.load(registry.SMOLLM2, device="cpu")).score([request])
    assert recommender.version == "v1" and max(abs(a - b) for a, b in zip(scores[0], base_scores[0])) > 1e-4
    assert not any("lora" in n for n, _ in models.summarizer.lm.model.named_modules())


def test_a_swap_waits_for_the_scoring_call_in_flight_and_lists_carry_the_version_that_scored(tmp_path):
    make_adapter(tmp_path / "v1", "v1", seed=1)
    make_adapter(tmp_path / "v2", "v2", seed=2)
    from models.llm.serving import AdapterSlot

    slot = AdapterSlot(registry.load(registry.SMOLLM2, device="cpu"))
    slot.swap(tmp_path / "v1")
    candidates = [Candidate(str(i), f"Film number {i}", ("Drama",)) for i in range(6)]
    requests = [preference_request("The user appears to have a preference for quiet dramas.", candidates)]
    expected_v1 = load_adapter(registry.load(registry.SMOLLM2, device="cpu"), tmp_path / "v1").score(requests)
    expected_v2 = load_adapter(registry.load(registry.SMOLLM2, device="cpu"), tmp_path / "v2").score(requests)
    assert max(abs(a - b) for a, b in zip(expected_v1[0], expected_v2[0])) > 1e-4  # a mixed call would show

    # hold the scoring call between its shared-prefix pass and its candidate passes
    recommender = slot.recommender
    between_passes, swap_done = threading.Event(), threading.Event()
    original = recommender._score_rows

    def paused_rows(*args, **kwargs):
        between_passes.set()
        time.sleep(1.0)  # a swap that did not wait would land here
        return original(*args, **kwargs)

    recommender._score_rows = paused_rows
    result = {}
    scorer = threading.Thread(target=lambda: result.update(out=slot.score(requests)))
    swapper = threading.Thread(target=lambda: (slot.swap(tmp_path / "v2"), swap_done.set()))
    scorer.start()
    assert between_passes.wait(60)
    swapper.start()
    scorer.join(120)
    swapper.join(120)
    scores, used = result["out"]
    assert used.version == "v1" and max(abs(a - b) for a, b in zip(scores[0], expected_v1[0])) < 1e-5
    assert swap_done.is_set() and slot.version == "v2"
    after, used = slot.score(requests)
    assert used.version == "v2" and max(abs(a - b) for a, b in zip(after[0], expected_v2[0])) < 1e-5


def tiny_sasrec(tmp_path, seed: int):
    from models.config import SASRecConfig
    from models.candidates.sequential import SequentialRetriever

    sequences = {f"u{n}": [f"i{(n + j) % 10}" for j in range(5)] for n in range(20)}
    model = SequentialRetriever.train(sequences, SASRecConfig(hidden=16, blocks=1, max_len=8, epochs=2, seed=seed))
    model.metadata["version"] = f"sasrec-test-{seed}"
    model.save_pretrained(tmp_path / "sasrec")
    return model


def test_a_collab_adapter_pairs_with_its_sequential_model_or_is_refused(tmp_path):
    import math

    from models.candidates.sequential import SequentialRetriever
    from streams.stages.recommendations import score_batch
    from tests.adapters import fusion_of, make_collab_adapter

    first = tiny_sasrec(tmp_path, 1)
    make_collab_adapter(tmp_path / "adapter", "c1", 1, first, fusion_of(1.0, 0.5))
    settings = Settings(summary_model="none", caption_model="none", recommender_model=registry.SMOLLM2,
                        recommender_adapter=str(tmp_path / "adapter"), retrieval_model=str(tmp_path / "sasrec"),
                        device="cpu", data_dir=tmp_path)
    metrics = Metrics()
    models = Models(settings, metrics, embedder=object())
    models.load_all()
    assert models.reranker.version == "c1" and models.reranker.recommender.collab.version == first.version
    # the fused score: the LLM margin and the paired SASRec's score, as the adapter's fusion says
    request = preference_request("The user appears to have a preference for dramas.",
                                 [Candidate("i1", "Heat (1995)"), Candidate("i2", "Babe (1995)"),
                                  Candidate("x", "Unknown (2001)")], ["i3", "i4"])
    services = type("S", (), {"models": models, "metrics": metrics})()
    fused, recommender, _ = score_batch(services, [request], [[{}, {}, {}]])
    p_yes, _ = models.reranker.score([request])
    sequential = first.item_scores(["i3", "i4"], ["i1", "i2", "x"])
    for f, p, s in zip(fused[0], p_yes[0], sequential):
        margin = math.log(p) - math.log1p(-p)
        expected = 1 / (1 + math.exp(-(margin + (0.5 * s if not math.isnan(s) else 0.0))))
        assert abs(f - expected) < 1e-6, (f, expected)
    assert math.isnan(sequential[2]) and recommender.fusion is not None

    # a retrained sequential model is served; an adapter still paired with the old one is refused
    second = tiny_sasrec(tmp_path, 2)
    assert models.check_sequential() and models.sequential.version == second.version
    make_collab_adapter(tmp_path / "adapter", "c2", 2, first)
    assert not models.check_adapter()
    assert models.reranker.version == "c1" and metrics.get("adapter_failures_total") == 1
    assert not models.check_adapter() and metrics.get("adapter_failures_total") == 1  # refused once, not each poll
    # c1 keeps reading the SASRec it was trained with, never the new one
    assert models.reranker.recommender.collab.sequential.version == first.version
    make_collab_adapter(tmp_path / "adapter", "c3", 3, SequentialRetriever.from_pretrained(tmp_path / "sasrec"))
    assert models.check_adapter() and models.reranker.recommender.collab.version == second.version


@pytest.mark.parametrize("compile_mode,warmed", [("always", {"captioner", "summarizer"}), ("auto", set())])
def test_the_worker_compiles_decoding_before_it_serves_where_decoding_compiles(tmp_path, compile_mode, warmed):
    """load_all warms the captioner and the summarizer up where ``generate`` would compile (the CPU
    only with 'always'). With the cache sized by the calls (the default), requests after the warm-up
    compile nothing more, and their summaries are the ones eager decoding writes."""
    from torch._dynamo.utils import counters

    settings = Settings(summary_model=registry.TINY_LLAVA, caption_model=registry.TINY_LLAVA, summary_max_new_tokens=6,
                        caption_max_new_tokens=4, summary_batch=2, caption_batch=2, generation_kv_cache="static",
                        generation_compile=compile_mode, generation_dtype="float32", device="cpu", data_dir=tmp_path)
    models = Models(settings, Metrics(), embedder=object())
    assert set(models.warm_up()) == warmed
    graphs = counters["stats"]["unique_graphs"]
    eager = UserSummarizer(models.summarizer.lm, SummarizerConfig(max_new_tokens=6, batch_size=2))
    # items with long descriptions: longer prompts than any caption prompt, and than a short warm-up
    plot = "Two detectives follow a careful thief across a city at night; neither can stop. " * 10
    long_history = [[f"{text}; Description: {plot}" for text in HISTORY[0]]] * 2
    assert models.summarizer.recurrent(long_history) == eager.recurrent(long_history)
    assert counters["stats"]["unique_graphs"] == graphs
    calls = []
    for warm in (True, False):  # load_all, before the worker joins its group, warms up unless told not to
        loading = Models(settings.model_copy(update={"generation_warm_up": warm}), Metrics(), embedder=object())
        loading.warm_up = lambda: calls.append(warm)
        loading.load_all()
    assert calls == [True]


def test_generating_models_load_in_bf16_where_the_cpu_multiplies_it_natively(tmp_path, monkeypatch):
    """The captioner and summarizer decode about 3x faster in bf16 on a CPU with AMX or AVX512-BF16
    (bench/results/cpu_precision.json); elsewhere, and for the re-ranker, 'auto' stays fp32."""
    import torch

    from models import device

    for native, expected in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(device, "cpu_has_bf16_matmul", lambda native=native: native)
        assert device.pick_generation_dtype(torch.device("cpu")) == expected
        assert device.pick_dtype(torch.device("cpu")) == torch.float32
    assert device.pick_generation_dtype(torch.device("cpu"), "float32") == torch.float32
    monkeypatch.setattr(device, "cpu_has_bf16_matmul", lambda: True)
    models = Models(Settings(summary_model=registry.TINY_LLAVA, caption_model="none", device="cpu", data_dir=tmp_path),
                    Metrics(), embedder=object())
    assert models.summarizer.lm.dtype == torch.bfloat16
    assert next(models.summarizer.lm.model.parameters()).dtype == torch.bfloat16
