"""Generation with the static KV cache (compiled decoding on a GPU) says what eager decoding says."""
from __future__ import annotations

import pytest

from models.generation import GenerationConfig, generate, render

PROMPTS = ["Name one film about the sea.", "Say hello.", "List three colours, then stop talking about colours now."]


@pytest.mark.parametrize("family", ["smollm2", "tiny_llava"])
def test_the_static_cache_generates_what_the_dynamic_one_does(family, request):
    lm = request.getfixturevalue(family)
    rendered = [render(lm, [{"role": "user", "content": p}]) for p in PROMPTS]
    dynamic = generate(lm, rendered, GenerationConfig(max_new_tokens=12, batch_size=2))
    # a length bucket of 16 pads each batch to a different, longer length than the dynamic run
    static = generate(lm, rendered, GenerationConfig(max_new_tokens=12, batch_size=2, kv_cache="static", pad_multiple=16))
    assert static == dynamic and all(dynamic)


def test_an_unknown_cache_is_refused():
    with pytest.raises(ValueError, match="kv_cache"):
        GenerationConfig(kv_cache="paged")
