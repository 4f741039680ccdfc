"""The sequential candidate source: the in-repo SASRec, trained on a log, saved and served.

``SequentialRetriever.from_pretrained`` is what the worker loads (``MMSR_RETRIEVAL_MODEL``); the
directory holds the config, the weights (safetensors), the item vocabulary and a metadata JSON
whose ``version`` the worker watches to pick up a retrained model without a restart. Items the
model never saw are left to the other sources.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch

from models.candidates.sasrec import SASRec, SASRecScorer
from models.config import EaseConfig, SASRecConfig
from models.candidates.ease import Ease
from models.llm.serving import publish_directory

METADATA = "mmsr-retrieval.json"


def read_version(directory: Path | str) -> str | None:
    path = Path(directory) / METADATA
    try:
        return json.loads(path.read_text()).get("version")
    except (OSError, ValueError):
        return None


def train_into(out_dir: Path | str, events: list[dict], config: SASRecConfig, until: str | None = None,
               *, echo: Callable[[str], object] = print, ease: EaseConfig = EaseConfig()) -> float:
    """SASRec (and EASE, unless ``ease.max_items`` is 0) trained on interaction events in time
    order and published to ``out_dir``, the directory a worker's ``MMSR_RETRIEVAL_MODEL`` watches;
    the seconds it took. One path for ``mmsr train-retrieval``, eval-stream and the demo, so that
    what is measured is what ships."""
    from models.candidates.sequences import sequences_of

    started = time.time()
    sequences = sequences_of(events)
    retriever = SequentialRetriever.train(sequences, config, progress=True,
                                          data={"events": len(events), "until": until})
    if ease.max_items > 0:
        retriever.ease = Ease.fit(sequences, ease)
        retriever.metadata["ease"] = {"config": asdict(ease), **retriever.ease.metadata}
    retriever.save_pretrained(out_dir)
    seconds = time.time() - started
    with_ease = f", EASE on {len(retriever.ease.vocabulary)} items" if retriever.ease is not None else ""
    echo(f"sequential model {retriever.version} in {out_dir}: {len(retriever.vocabulary)} items{with_ease}, "
         f"{len(events)} events, {seconds:.0f} s")
    return seconds


def vocabulary_of(scorer: SASRecScorer) -> list[str]:
    """The trained item ids in embedding-row order (row 0 is padding)."""
    return [item for item, _ in sorted(scorer.index.items(), key=lambda kv: kv[1])]


class SequentialRetriever:
    """SASRec, and the EASE source trained beside it (``ease``: None where the directory has none)."""

    def __init__(self, model: SASRec, vocabulary: list[str], metadata: dict, ease: Ease | None = None):
        self.model, self.vocabulary, self.metadata, self.ease = model.eval(), vocabulary, metadata, ease
        self.index = {item: n + 1 for n, item in enumerate(vocabulary)}
        self.config: SASRecConfig = model.config

    @property
    def version(self) -> str:
        return self.metadata["version"]

    @classmethod
    def train(cls, sequences: dict[str, list[str]], config: SASRecConfig, progress: bool = False,
              data: dict | None = None, on_epoch=None) -> "SequentialRetriever":
        """``on_epoch``: as ``SASRecScorer``'s (early stopping)."""
        started = time.time()
        scorer = SASRecScorer(sequences, config, progress=progress, on_epoch=on_epoch)
        vocabulary = vocabulary_of(scorer)
        metadata = {"version": f"sasrec-{int(time.time() * 1000)}", "model": "sasrec", "config": asdict(config),
                    "items": len(vocabulary), "users": len(sequences), "seconds": round(time.time() - started, 1),
                    "final_loss": scorer.losses[-1] if scorer.losses else None, "data": data or {}}
        return cls(scorer.model.cpu(), vocabulary, metadata)

    def save_pretrained(self, out_dir: Path | str) -> Path:
        from safetensors.torch import save_file

        def write(tmp: Path) -> None:
            (tmp / "config.json").write_text(json.dumps(asdict(self.config), indent=2))
            (tmp / "vocab.json").write_text(json.dumps(self.vocabulary))
            save_file({k: v.contiguous() for k, v in self.model.state_dict().items()}, str(tmp / "model.safetensors"))
            (tmp / METADATA).write_text(json.dumps(self.metadata, indent=2))
            if self.ease is not None:
                self.ease.save_pretrained(tmp)

        return publish_directory(out_dir, write)

    @classmethod
    def from_pretrained(cls, directory: Path | str) -> "SequentialRetriever":
        from safetensors.torch import load_file

        directory = Path(directory)
        config = SASRecConfig(**{**json.loads((directory / "config.json").read_text()), "device": "cpu"})
        vocabulary = json.loads((directory / "vocab.json").read_text())
        model = SASRec(len(vocabulary), config)
        model.load_state_dict(load_file(str(directory / "model.safetensors")))
        return cls(model, vocabulary, json.loads((directory / METADATA).read_text()), Ease.from_pretrained(directory))

    @torch.no_grad()
    def user_states(self, histories: list[list[str]] | list[tuple[str, ...]]) -> tuple[torch.Tensor, list[int]]:
        """(users with a known item, hidden) last hidden states after each history, in one forward;
        and which users those rows are (the others have no item the model knows)."""
        rows = [[self.index[i] for i in h if i in self.index][-self.config.max_len:] for h in histories]
        known = [u for u, r in enumerate(rows) if r]
        if not known:
            return torch.zeros(0, self.config.hidden), known
        length = self.config.max_len
        seqs = torch.tensor([[0] * (length - len(rows[u])) + rows[u] for u in known])
        return self.model(seqs)[:, -1].float(), known

    @torch.no_grad()
    def item_scores(self, history: list[str], items: list[str]) -> list[float]:
        """The model's scores of ``items`` after ``history``; NaN where it knows the item or the user not."""
        hidden, known = self.user_states([history])
        ids = [self.index.get(i, 0) for i in items]
        if not known:
            return [float("nan")] * len(items)
        values = (self.model.items.weight[ids].float() @ hidden[0]).tolist()
        return [v if j else float("nan") for v, j in zip(values, ids)]

    @torch.inference_mode()
    def top_k(self, histories: list[list[str]], k: int, exclude: list[set[str]]) -> list[list[tuple[str, float]]]:
        """Per user: the ``k`` best items the model knows, history excluded; one forward for all."""
        out: list[list[tuple[str, float]]] = [[] for _ in histories]
        hidden, known = self.user_states(histories)
        if not known:
            return out
        scores = hidden @ self.model.items.weight.T  # column 0 is padding
        scores[:, 0] = -torch.inf
        for n, u in enumerate(known):
            banned = [self.index[i] for i in exclude[u] if i in self.index]
            if banned:
                scores[n, banned] = -torch.inf
        take = min(k, scores.shape[1] - 1)
        values, indices = scores.topk(take, dim=1)
        for n, u in enumerate(known):
            out[u] = [(self.vocabulary[j - 1], float(v)) for v, j in zip(values[n].tolist(), indices[n].tolist())
                      if v > -torch.inf]
        return out
