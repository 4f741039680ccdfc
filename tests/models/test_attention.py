"""The CPU attention keeps grouped K/V grouped and gives transformers' SDPA results."""
from __future__ import annotations

import types

import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from models.attention import CPU_GQA_SDPA, cpu_gqa_sdpa


def test_grouped_masked_attention_equals_transformers_sdpa():
    torch.manual_seed(0)
    module = types.SimpleNamespace(num_key_value_groups=3, is_causal=True)
    query, key, value = torch.randn(4, 9, 5, 16), torch.randn(4, 3, 12, 16), torch.randn(4, 3, 12, 16)
    mask = torch.ones(4, 1, 5, 12, dtype=torch.bool).tril(7)
    mask[1, :, :, :4] = False  # a left-padded row
    ours, _ = cpu_gqa_sdpa(module, query, key, value, mask, scaling=0.25)
    theirs, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=0.25)
    assert ours.shape == theirs.shape == (4, 5, 9, 16)
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_models_loaded_on_the_cpu_use_it(smollm2, tiny_llava):
    assert smollm2.model.config._attn_implementation == CPU_GQA_SDPA
    assert tiny_llava.model.config.text_config._attn_implementation == CPU_GQA_SDPA
