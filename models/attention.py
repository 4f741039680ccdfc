"""Scaled-dot-product attention that keeps grouped K/V grouped on the CPU, registered with transformers.

transformers' SDPA path copies grouped key/value heads out to every query head whenever an
attention mask is given (on CUDA the grouped kernels only take mask-free calls). On the CPU the
grouped call with a mask works and that copy is pure cost: the shared-prefix scorer runs every
candidate row against a masked, cached user prefix, and the copy was about a tenth of its time.
Everywhere else (no mask, no grouping, other devices) this is transformers' own SDPA.
"""
from __future__ import annotations

import torch

CPU_GQA_SDPA = "mmsr_cpu_gqa_sdpa"


def cpu_gqa_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, is_causal=None,
                 **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    grouped = getattr(module, "num_key_value_groups", 1) > 1
    if query.device.type != "cpu" or attention_mask is None or not grouped or kwargs.get("position_bias") is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask,
                                                           dropout_p=dropout, scale=scaling, enable_gqa=True)
    return out.transpose(1, 2).contiguous(), None


def register() -> str:
    """Make the implementation loadable by name (idempotent); masks are built as for SDPA."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(CPU_GQA_SDPA, cpu_gqa_sdpa)
    AttentionMaskInterface.register(CPU_GQA_SDPA, sdpa_mask)
    return CPU_GQA_SDPA
