"""EASE (Steck, WWW 2019) as a candidate source: a linear item-to-item model in closed form.

Each item's score for a user is sum over the items the user has seen of B[seen, item], where B
minimises ||X - XB||^2 + l2 ||B||^2 with diag(B) = 0 over the user-item matrix X of the log:
B = I - P diag(1/diag(P)), P = (X'X + l2 I)^-1. Unlike co-occurrence (counts of items near each
other in a history, normalised) the weights are fitted jointly, so an item explained by others
the user has seen is not counted again, and the weights can be negative: pruning them to a
top 200 per item lost most of the gain on ML-100K (validation HR@10 of the blend 0.2250 against
0.2284 dense). It reads the user's whole history as a set: order is the sequential source's job.

The weights are dense, items x items: ``EaseConfig.max_items`` bounds the catalog it is fitted
on to the most interacted items (the rest are left to the other sources, as SASRec leaves items
it never saw). It is trained and saved with the sequential source (``models.candidates.sequential.train_into``),
in the same versioned directory, so one version names both and one watch swaps both.
"""
from __future__ import annotations

import itertools
import json
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Iterable

import torch

from models.config import EaseConfig

WEIGHTS, CONFIG = "ease.safetensors", "ease.json"


def count_pairs(gram: torch.Tensor, pairs: list[torch.Tensor]) -> None:
    """Add one to the flattened X'X at each pair index (row * items + column)."""
    if pairs:
        flat = torch.cat(pairs)
        gram.index_add_(0, flat, torch.ones(len(flat), dtype=gram.dtype))


class Ease:
    def __init__(self, weights: torch.Tensor, vocabulary: list[str], config: EaseConfig, metadata: dict | None = None):
        self.weights, self.vocabulary, self.config = weights, vocabulary, config
        self.metadata = metadata or {}
        self.index = {item: n for n, item in enumerate(vocabulary)}

    @classmethod
    def fit(cls, sequences: dict[str, list[str]], config: EaseConfig, pairs_per_step: int = 1 << 24) -> "Ease":
        """The closed form on the users' item sets. X'X is summed pair by pair over each user's
        items (sum over users of their distinct items squared), in steps of ``pairs_per_step``: never
        users x items, which a dense product would need."""
        started = time.time()
        counts = Counter(item for items in sequences.values() for item in set(items))
        vocabulary = [item for item, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:config.max_items]]
        index, n = {item: j for j, item in enumerate(vocabulary)}, len(vocabulary)
        gram = torch.zeros(n * n, dtype=torch.float64)
        pending: list[torch.Tensor] = []
        size = 0
        for items in sequences.values():
            columns = torch.tensor(sorted({index[i] for i in items if i in index}), dtype=torch.long)
            pending.append(columns.repeat_interleave(len(columns)) * n + columns.repeat(len(columns)))
            size += len(columns) ** 2
            if size >= pairs_per_step:
                count_pairs(gram, pending)
                pending, size = [], 0
        count_pairs(gram, pending)
        gram = gram.view(n, n)
        gram.diagonal().add_(config.l2)
        inverse = torch.linalg.inv(gram)
        del gram, pending  # in place from here: the fit's peak is two items x items float64 matrices
        inverse /= -inverse.diagonal().clone()  # column j divided by -P_jj
        inverse.fill_diagonal_(0.0)
        metadata = {"items": n, "users": len(sequences), "seconds": round(time.time() - started, 1)}
        return cls(inverse.float().contiguous(), vocabulary, config, metadata)  # rows are gathered: row-major

    def save_pretrained(self, directory: Path | str) -> None:
        from safetensors.torch import save_file

        directory = Path(directory)
        save_file({"weights": self.weights.contiguous()}, str(directory / WEIGHTS))
        (directory / CONFIG).write_text(json.dumps({"config": asdict(self.config), "vocabulary": self.vocabulary,
                                                    "metadata": self.metadata}))

    @classmethod
    def from_pretrained(cls, directory: Path | str) -> "Ease | None":
        """The EASE saved in ``directory``, or None where there is none (a directory from before EASE)."""
        from safetensors.torch import load_file

        directory = Path(directory)
        if not (directory / WEIGHTS).is_file():
            return None
        saved = json.loads((directory / CONFIG).read_text())
        weights = load_file(str(directory / WEIGHTS))["weights"]
        if weights.shape != (len(saved["vocabulary"]),) * 2:
            raise ValueError(f"EASE weights {tuple(weights.shape)} do not match {len(saved['vocabulary'])} items")
        return cls(weights, saved["vocabulary"], EaseConfig(**saved["config"]), saved.get("metadata"))

    @torch.inference_mode()
    def top_k(self, histories: list[Iterable[str]], k: int, exclude: list[set[str]]) -> list[list[tuple[str, float]]]:
        """Per user: the ``k`` best items, history and ``exclude`` left out (the same shape as the
        sequential source's ``top_k``); empty for a user with no item the model knows. One
        ``embedding_bag`` sums every user's rows without copying them out first."""
        out: list[list[tuple[str, float]]] = [[] for _ in histories]
        rows = [sorted({self.index[i] for i in history if i in self.index}) for history in histories]
        known = [u for u, r in enumerate(rows) if r]
        if not known:
            return out
        flat = torch.tensor([j for u in known for j in rows[u]], dtype=torch.long)
        offsets = torch.tensor([0, *itertools.accumulate(len(rows[u]) for u in known[:-1])], dtype=torch.long)
        scores = torch.nn.functional.embedding_bag(flat, self.weights, offsets, mode="sum")
        # the stream's exclude is the history itself: each item banned once
        banned = [(n, j) for n, u in enumerate(known)
                  for j in set(rows[u]).union(self.index[i] for i in exclude[u] if i in self.index)]
        scores[[n for n, _ in banned], [j for _, j in banned]] = -torch.inf
        values, indices = scores.topk(min(k, len(self.vocabulary)), dim=1)
        for n, u in enumerate(known):
            out[u] = [(self.vocabulary[j], v) for v, j in zip(values[n].tolist(), indices[n].tolist()) if v > -torch.inf]
        return out
