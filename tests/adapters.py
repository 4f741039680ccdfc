"""LoRA adapters for tests: random, but not a no-op, saved as `mmsr train` saves them."""
from __future__ import annotations

import torch

from models import registry
from models.config import LoraSettings
from models.llm.training import attach_lora, save_adapter


def random_lora(base: str, seed: int, scale: float):
    """(the loaded base model, a peft model over it whose LoRA B matrices are random with std ``scale``:
    a fresh adapter is an exact no-op)."""
    lm = registry.load(base, device="cpu")
    model = attach_lora(lm, LoraSettings(), seed=seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * scale)
    return lm, model


def make_adapter(directory, version: str, seed: int, base: str = registry.SMOLLM2, scale: float = 0.02) -> None:
    """A random LoRA adapter, saved as `mmsr train` saves one."""
    _, model = random_lora(base, seed, scale)
    save_adapter(model, directory, {"base_model": base, "version": version})


def make_collab_adapter(directory, version: str, seed: int, sequential, fusion=None, base: str = registry.SMOLLM2,
                        scale: float = 0.02) -> None:
    """A random adapter with a random projector paired with ``sequential`` (and a fused score), saved as
    `mmsr eval`'s collaborative stages save them."""
    from models.llm.collab import Projector

    lm, model = random_lora(base, seed, scale)
    projector = Projector.for_models(lm, sequential, seed=seed)
    save_adapter(model, directory, {"base_model": base, "version": version,
                                    "collab": {"sequential_version": sequential.version}}, projector)
    if fusion is not None:
        fusion.save_pretrained(directory)


def fusion_of(llm_margin: float, sequential: float, sequential_mean: float = 0.0, sequential_scale: float = 1.0):
    """A fused score that reads only the LLM margin and the sequential score, with these weights."""
    from models.llm.fusion import FEATURES, FusedScorer

    return FusedScorer(FEATURES, (0.0, sequential_mean, 0.0, 0.0), (1.0, sequential_scale, 1.0, 1.0),
                       (llm_margin, sequential, 0.0, 0.0), 0.0, ((0.0, 0.0),) * 4, {"by": "tests"})
