"""Device and dtype choice shared by every model loader."""
from __future__ import annotations

import torch


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def pick_dtype(device: torch.device, requested: str = "auto") -> torch.dtype:
    if requested != "auto":
        return getattr(torch, requested)
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def cpu_has_bf16_matmul() -> bool:
    """Whether oneDNN runs bf16 matrix products natively here (AMX or AVX512-BF16): there a bf16
    model decodes about three times as fast as fp32 (bench/results/cpu_precision.json); without
    them bf16 is emulated and slower than fp32."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def pick_generation_dtype(device: torch.device, requested: str = "auto") -> torch.dtype:
    """The dtype of the models that generate text (captioner, summarizer): bf16 where it is native."""
    if requested != "auto":
        return getattr(torch, requested)
    if device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16_matmul()):
        return torch.bfloat16
    return torch.float32
