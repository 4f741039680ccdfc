"""LoRA adapters for tests: random, but not a no-op, saved as `mmsr train` saves them."""
from __future__ import annotations

import torch

from models import registry
from models.config import LoraSettings
from models.training import attach_lora, save_adapter


def make_adapter(directory, version: str, seed: int, base: str = registry.SMOLLM2, scale: float = 0.02) -> None:
    """A LoRA adapter with random B matrices of std ``scale`` (a fresh one is an exact no-op)."""
    lm = registry.load(base, device="cpu")
    model = attach_lora(lm, LoraSettings(), seed=seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * scale)
    save_adapter(model, directory, {"base_model": base, "version": version})
