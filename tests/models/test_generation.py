"""Generation with the static KV cache, eager or compiled, says what eager decoding with the dynamic cache says."""
from __future__ import annotations

import pytest
from torch._dynamo.utils import counters

import torch

from models.llm.generation import Decoding, GenerationConfig, generate, render, warm_up

PROMPTS = ["Name one film about the sea.", "Say hello.", "List three colours, then stop talking about colours now.",
           "Describe, in some detail and at some length, a long film about a long journey across a very wide sea."]


def rendered(lm, prompts=PROMPTS) -> list[str]:
    return [render(lm, [{"role": "user", "content": p}]) for p in prompts]


@pytest.mark.parametrize("family", ["smollm2", "tiny_llava"])
def test_the_static_cache_generates_what_the_dynamic_one_does(family, request):
    lm = request.getfixturevalue(family)
    texts = rendered(lm, PROMPTS[:3])
    dynamic = generate(lm, texts, GenerationConfig(max_new_tokens=12, batch_size=2))
    # a length bucket of 16 pads each batch to a different, longer length than the dynamic run
    static = generate(lm, texts, GenerationConfig(max_new_tokens=12, batch_size=2,
                                                  decoding=Decoding(kv_cache="static", pad_multiple=16)))
    assert static == dynamic and all(dynamic)


def compiled_graphs() -> int:
    return counters["stats"]["unique_graphs"]


def test_compiled_decoding_generates_what_eager_decoding_does_and_compiles_a_few_shapes(tiny_llava):
    """The CPU stands in for the GPU here: 'always' compiles the decoding step as CUDA would by default."""
    texts = rendered(tiny_llava)
    eager = GenerationConfig(max_new_tokens=10, batch_size=4)
    compiled = GenerationConfig(max_new_tokens=10, batch_size=4, decoding=Decoding(
        kv_cache="static", compile="always", pad_multiple=16, cache_len=256))
    before = compiled_graphs()
    # batches of 1, 2, 3 (run as 4) and 4 rows, prompts of several length buckets
    for chunk in ([texts[0]], texts[1:3], texts[:3], texts, [texts[3]], texts[2:]):
        assert generate(tiny_llava, chunk, compiled) == generate(tiny_llava, chunk, eager)
    graphs = compiled_graphs() - before
    assert graphs >= 1, "the static cache with compile='always' did not compile the decoding step"
    # the first shape, then one graph with the batch size dynamic; a cache grown with the calls
    # (cache_len=0) compiles a third here (measured)
    assert graphs <= 2, f"{graphs} graphs compiled for 6 calls"


def test_a_warm_up_compiles_every_batch_size_before_the_first_request(tiny_llava):
    """After ``warm_up`` the calls a worker makes, of every batch size, compile nothing more."""
    texts = rendered(tiny_llava)
    compiled = GenerationConfig(max_new_tokens=8, batch_size=4, decoding=Decoding(
        kv_cache="static", compile="always", pad_multiple=16, cache_len=256))
    torch._dynamo.reset()  # forget what earlier tests compiled: this warm-up starts cold
    before = compiled_graphs()
    assert warm_up(tiny_llava, compiled, longest=texts[3], shortest=texts[1]) == 3  # rows 1, 2 and 4
    warmed = compiled_graphs()
    assert warmed > before
    for chunk in ([texts[0]], texts[1:3], texts[:3], texts):
        assert generate(tiny_llava, chunk, compiled) == generate(tiny_llava, chunk, GenerationConfig(max_new_tokens=8))
    assert compiled_graphs() == warmed, "a request compiled after the warm-up"


@pytest.mark.parametrize("decoding,on_cuda", [(Decoding(), False), (Decoding(kv_cache="static"), True),
                                              (Decoding(kv_cache="static", compile="never"), False)])
def test_no_warm_up_where_nothing_compiles(tiny_llava, decoding, on_cuda):
    """The CPU compiles only with 'always'; CUDA compiles a static cache unless told 'never'."""
    before = compiled_graphs()
    texts = rendered(tiny_llava)
    assert warm_up(tiny_llava, GenerationConfig(max_new_tokens=4, batch_size=4, decoding=decoding),
                   longest=texts[3], shortest=texts[0]) == 0
    assert compiled_graphs() == before
    assert not decoding.compiles_on("cpu") and decoding.compiles_on("cuda") == on_cuda


@pytest.mark.parametrize("compile_mode", ["auto", "never"])
def test_the_cpu_decodes_eagerly_unless_compiling_is_asked_for(tiny_llava, compile_mode):
    texts = rendered(tiny_llava, PROMPTS[:2])
    config = GenerationConfig(max_new_tokens=6, batch_size=2,
                              decoding=Decoding(kv_cache="static", compile=compile_mode, pad_multiple=16))
    before = compiled_graphs()
    assert all(generate(tiny_llava, texts, config))
    assert compiled_graphs() == before


def test_static_batches_are_bucketed_to_powers_of_two_up_to_the_batch_size():
    static = GenerationConfig(batch_size=12, decoding=Decoding(kv_cache="static"))
    assert [static.rows_for(n) for n in (1, 2, 3, 4, 5, 8, 9, 12)] == [1, 2, 4, 4, 8, 8, 12, 12]
    assert GenerationConfig(batch_size=12).rows_for(3) == 3  # eager decoding runs the rows it has


@pytest.mark.parametrize("options,field", [({"kv_cache": "paged"}, "kv_cache"), ({"compile": "sometimes"}, "compile"),
                                           ({"cache_len": -1}, "cache_len")])
def test_unknown_decoding_options_are_refused(options, field):
    with pytest.raises(ValueError, match=field):
        Decoding(**options)


def test_stop_after_counts_from_each_call_s_own_prompt(tiny_llava, capsys, caplog):
    """One call per row (batch_size 1) over prompts of three lengths: each stops 4 tokens in,
    without transformers warning that a custom criterion replaced its own."""
    from transformers.utils import logging as hf_logging

    texts = rendered(tiny_llava, [PROMPTS[1], PROMPTS[3], PROMPTS[0]])
    short = generate(tiny_llava, texts, GenerationConfig(max_new_tokens=20, batch_size=1), stop_after=4)
    full = generate(tiny_llava, texts, GenerationConfig(max_new_tokens=20, batch_size=1))
    assert [len(tiny_llava.tokenizer(t, add_special_tokens=False).input_ids) for t in short] == [4, 4, 4]
    assert all(f.startswith(s) and len(f) > len(s) for s, f in zip(short, full))
    # past max_new_tokens a static cache has no room: the criterion must keep that bound too
    capped = generate(tiny_llava, texts, GenerationConfig(max_new_tokens=2, batch_size=1), stop_after=4)
    assert [len(tiny_llava.tokenizer(t, add_special_tokens=False).input_ids) for t in capped] == [2, 2, 2]
    hf_logging.get_logger("transformers").warning_once.cache_clear()
    generate(tiny_llava, texts[:1], GenerationConfig(max_new_tokens=8, batch_size=1), stop_after=4)
    said = capsys.readouterr().err + caplog.text
    assert "take precedence" not in said
