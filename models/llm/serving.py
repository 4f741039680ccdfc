"""Serving trained adapters: loading, metadata, and the hot-swappable slot the stream scores through.

Kept apart from the trainer: a serving process needs none of the optimizer, checkpoint or data
code, and the rules that make a live swap safe (one adapter per scoring call, the list labelled
with the version that scored it) belong to serving.
"""
from __future__ import annotations

import json
import re
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from models.llm.fusion import FusedScorer
from models.llm.recommender import Recommender, ScorerConfig
from models.llm.requests import ScoreRequest
from models.registry import LoadedModel

ADAPTER_METADATA = "mmsr-adapter.json"


def publish_directory(out_dir: Path | str, write) -> Path:
    """Write a model directory beside ``out_dir`` (``write(tmp)``) and rename it into place, so a
    process watching ``out_dir`` never loads a half-written model."""
    import shutil

    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    old = out_dir.with_name(out_dir.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out_dir.exists():
        out_dir.rename(old)
    tmp.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)
    return out_dir


def read_metadata(adapter_dir: Path | str) -> dict:
    path = Path(adapter_dir) / ADAPTER_METADATA
    return json.loads(path.read_text()) if path.is_file() else {}


def _wrap(lm: LoadedModel, model) -> LoadedModel:
    return LoadedModel(lm.name, lm.path, model, lm.tokenizer, lm.processor, lm.device, lm.dtype, lm.lock)


def collab_tokens(lm: LoadedModel, adapter_dir: Path, sequential):
    """The adapter's collaborative tokens paired with ``sequential``, or None for a text-only adapter.

    Raises ``models.llm.collab.VersionMismatch`` for a sequential model other than the projector's,
    and ValueError when the adapter needs one and none is given.
    """
    from models.llm.collab import CollabTokens, Projector, has_projector

    if not has_projector(adapter_dir):
        return None
    projector = Projector.from_pretrained(adapter_dir)
    if sequential is None:
        raise ValueError(f"adapter {adapter_dir} reads collaborative tokens from sequential model "
                         f"{projector.config.sequential_version!r}, and no sequential model is serving")
    return CollabTokens(projector, sequential, lm.tokenizer)


def load_adapter(lm: LoadedModel, adapter_dir: Path | str, config: ScorerConfig = ScorerConfig(),
                 sequential=None) -> Recommender:
    """A recommender over ``lm`` with a saved adapter; its version comes from the metadata.

    An adapter trained with collaborative tokens needs the ``sequential`` model its projector was
    trained with. peft injects the LoRA layers into ``lm.model`` in place: ``lm`` must not be
    shared with anything that generates (captions, summaries) afterwards.
    """
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    metadata = read_metadata(adapter_dir)
    collab = collab_tokens(lm, adapter_dir, sequential)
    model = PeftModel.from_pretrained(lm.model, adapter_dir).eval()
    return Recommender(_wrap(lm, model), config, version=metadata.get("version", adapter_dir.name), collab=collab,
                       fusion=FusedScorer.from_pretrained(adapter_dir))


class AdapterSlot:
    """A recommender whose LoRA adapter can be replaced while it serves (the worker's hot swap).

    The slot owns its model instance: peft injects adapters into the model in place, so a model
    shared with the captioner or summarizer would generate through the adapter. A scoring call
    pins the adapter for all of its passes (shared prefixes and candidates); a swap waits for it
    and then loads the new adapter under its version's name, activates it and drops the old one.
    """

    def __init__(self, lm: LoadedModel, config: ScorerConfig = ScorerConfig()):
        self.lm, self.config = lm, config
        self.peft = None
        self._pin = threading.Lock()
        self.recommender = Recommender(lm, config, version="base")

    @property
    def version(self) -> str:
        return self.recommender.version

    @contextmanager
    def pinned(self) -> Iterator[Recommender]:
        """The serving recommender, unchanged until the block exits (a swap waits)."""
        with self._pin:
            yield self.recommender

    def score(self, requests: list[ScoreRequest]) -> tuple[list[list[float]], Recommender]:
        """Scores with one adapter for the whole call, and the recommender (version) that produced them."""
        with self.pinned() as recommender:
            return recommender.score(requests), recommender

    def swap(self, adapter_dir: Path | str, sequential=None) -> str:
        """Serve ``adapter_dir``; its collaborative tokens (if any) read ``sequential``, which must be
        the model its projector was trained with (``VersionMismatch`` otherwise, and the slot keeps
        serving what it served)."""
        from peft import PeftModel

        adapter_dir = Path(adapter_dir)
        version = read_metadata(adapter_dir).get("version") or adapter_dir.name
        name = re.sub(r"\W", "_", version)
        collab = collab_tokens(self.lm, adapter_dir, sequential)
        fusion = FusedScorer.from_pretrained(adapter_dir)
        with self._pin, self.lm.lock:
            previous = self.peft.active_adapter if self.peft is not None else None
            if self.peft is None:
                self.peft = PeftModel.from_pretrained(self.lm.model, adapter_dir, adapter_name=name).eval()
            elif name != previous:
                self.peft.load_adapter(adapter_dir, adapter_name=name)
                self.peft.set_adapter(name)
                self.peft.delete_adapter(previous)
            self.peft.eval()
            self.recommender = Recommender(_wrap(self.lm, self.peft), self.config, version=version, collab=collab,
                                           fusion=fusion)
        return version
