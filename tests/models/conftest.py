"""Real models, loaded once per test session: SmolLM2-135M (converted from its package) and the tiny LLaVA."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def smollm2():
    from models import registry

    return registry.load(registry.SMOLLM2, device="cpu")


@pytest.fixture(scope="session")
def tiny_llava():
    from models import registry

    return registry.load(registry.TINY_LLAVA, device="cpu")
