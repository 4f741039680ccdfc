"""Model hosting: every model a worker runs, loaded once, with the adapter hot-swap, and the
check that an adapter is served with the text settings it was trained on."""
from __future__ import annotations

import functools
import logging
import time

from streams.metrics import Metrics
from streams.settings import Settings

log = logging.getLogger(__name__)

# what a model call is expected to raise on a bad input (torch and tokenizers raise RuntimeError
# and ValueError, image and file access OSError); anything else is a programming error and propagates
MODEL_ERRORS = (RuntimeError, ValueError, OSError)


class Models:
    """Every model the worker runs, loaded once. The recommender gets its own instance of its base
    model: peft puts adapters into a model in place, and captions and summaries must come from the
    base weights. The state role loads no generating model (``Settings.generates_here``)."""

    def __init__(self, settings: Settings, metrics: Metrics, embedder=None):
        self.settings, self.metrics = settings, metrics
        self._embedder = embedder
        self._generators: dict[str, object] = {}

    def _load(self, name: str):
        from models import registry

        return registry.load(name, self.settings.device, self.settings.model_dtype)

    def generator(self, name: str):
        """One loaded instance per model name for the stages that generate (never carries an adapter)."""
        if name not in self._generators:
            from models import registry

            self._generators[name] = registry.load(name, self.settings.device, self.settings.generation_dtype,
                                                   generates=True)
        return self._generators[name]

    @property
    def embedder(self):
        if self._embedder is None:
            from models.embeddings import TextEmbedder

            self._embedder = TextEmbedder(self.settings.embed_model, device=self.settings.device)
        return self._embedder

    def embed(self, texts: list[str]):
        """Item texts to vectors, in batches of MMSR_EMBED_BATCH (blocking: call it in a thread)."""
        return self.embedder.embed(texts, self.settings.embed_batch)

    @functools.cached_property
    def summarizer(self):
        """The recurrent user summarizer, or None when MMSR_SUMMARY_MODEL is 'none'."""
        if self.settings.summary_model == "none" or not self.settings.generates_here:
            return None
        from models.llm.user_summarizer import UserSummarizer

        return UserSummarizer(self.generator(self.settings.summary_model), self.settings.summarizer_config())

    @functools.cached_property
    def captioner(self):
        """The captioner, or None when MMSR_CAPTION_MODEL is 'none'."""
        if self.settings.caption_model == "none" or not self.settings.generates_here:
            return None
        from models.llm.captioner import Captioner

        return Captioner(self.generator(self.settings.caption_model), self.settings.caption_config())

    @functools.cached_property
    def reranker(self):
        """The LoRA recommender's slot (hot-swappable adapter), or None when MMSR_RECOMMENDER_MODEL is 'none'."""
        if self.settings.recommender_model == "none" or not self.settings.generates_here:
            return None
        from models.llm.serving import AdapterSlot

        return AdapterSlot(self._load(self.settings.recommender_model), self.settings.scorer_config())

    def load_all(self) -> None:
        """Load (and on first use convert or build) every configured model before consuming."""
        if self.settings.role != "llm":  # the llm role embeds nothing: the state role re-embeds captioned items
            _ = self.embedder
        _ = self.summarizer, self.captioner, self.reranker
        if self.settings.generation_warm_up:
            self.warm_up()
        self.check_sequential()  # first: an adapter with collaborative tokens pairs with it
        self.check_adapter()

    def warm_up(self) -> dict[str, float]:
        """Compile the captioner's and summarizer's decoding now, where it compiles at all
        (``models.llm.generation.warm_up``); seconds per model warmed."""
        spent = {}
        # the summarizer first: its longest prompt is the longer, and when both share one model the
        # cache never shrinks, so the captioner's calls then reuse its length (2 graphs, not 4,
        # with the tiny LLaVA serving both)
        for name, model in (("summarizer", self.summarizer), ("captioner", self.captioner)):
            started = time.perf_counter()
            if model is not None and model.warm_up():
                spent[name] = time.perf_counter() - started
                log.info("%s decoding compiled before serving in %.1f s", name, spent[name])
        return spent

    sequential = None  # the served SequentialRetriever, or None
    _refused: tuple | None = None  # (adapter version, sequential version) of the last refused swap

    def check_sequential(self) -> bool:
        """Load the sequential model directory's version when it differs from the one serving; True on a swap.

        A missing, half-written or unreadable directory keeps the current model.
        """
        path = self.settings.retrieval_model
        if path == "none":
            return False
        from models.candidates.sequential import SequentialRetriever, read_version

        version = read_version(path)
        if not version or (self.sequential is not None and self.sequential.version == version):
            return False
        try:
            loaded = SequentialRetriever.from_pretrained(path)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            log.warning("sequential model %s (version %s) could not be loaded: %s", path, version, exc)
            self.metrics.inc("retrieval_model_failures_total")
            return False
        self.sequential = loaded  # one assignment: a list in progress keeps the model it started with
        self.metrics.inc("retrieval_model_swaps_total")
        log.info("sequential model version %s in use (%d items; EASE: %s)", loaded.version, len(loaded.vocabulary),
                 "none" if loaded.ease is None else f"{len(loaded.ease.vocabulary)} items")
        return True

    def check_adapter(self) -> bool:
        """Swap in the adapter directory's version when it differs from the one serving; True on a swap.

        A missing or unreadable directory keeps the current adapter (a retrain may be mid-rename).
        """
        path = self.settings.recommender_adapter
        if self.reranker is None or not path:
            return False
        from models.llm.serving import read_metadata

        try:
            version = read_metadata(path).get("version")
        except (OSError, ValueError):
            return False
        if not version or version == self.reranker.version:
            return False
        attempt = (version, None if self.sequential is None else self.sequential.version)
        if attempt == self._refused:
            return False  # refused with this sequential model already; said once
        try:
            self.reranker.swap(path, self.sequential)
        except MODEL_ERRORS as exc:  # a bad adapter (or one paired with another sequential model) must not stop the worker
            log.error("adapter %s (version %s) could not be loaded, serving %s still: %s", path, version,
                      self.reranker.version, exc)
            self.metrics.inc("adapter_failures_total")
            self._refused = attempt
            return False
        self.metrics.inc("adapter_swaps_total")
        log.info("recommender adapter version %s in use", version)
        for difference in text_mismatches(read_metadata(path), self.settings):
            self.metrics.inc("adapter_text_mismatches_total")
            log.warning("adapter %s was trained on other texts than this worker writes: %s", version, difference)
        return True


# the fields of an adapter's training protocol that shape the texts it reads, and the settings
# with which a worker writes those texts
PROTOCOL_TEXT_SETTINGS = {"block": "summary_block", "caption_tokens": "caption_max_new_tokens",
                          "summary_tokens": "summary_max_new_tokens", "summary_model": "summary_model"}


def trained_text_settings(metadata: dict) -> dict[str, object]:
    """The settings that write the texts an adapter was trained on (those its protocol records)."""
    protocol = (metadata.get("data") or {}).get("protocol") or {}
    # an empty summary_model: the summaries were written by the adapter's base model
    return {setting: protocol[name] for name, setting in PROTOCOL_TEXT_SETTINGS.items()
            if protocol.get(name) not in (None, "")}


def text_mismatches(metadata: dict, settings: Settings) -> list[str]:
    """Where the texts an adapter was trained on (its protocol's block and generation lengths)
    differ from what this worker writes: such an adapter is served out of its training distribution."""
    trained = trained_text_settings(metadata)
    return [f"{name}: trained {trained[setting]}, served {getattr(settings, setting)}"
            for name, setting in PROTOCOL_TEXT_SETTINGS.items()
            if setting in trained and trained[setting] != getattr(settings, setting)]
