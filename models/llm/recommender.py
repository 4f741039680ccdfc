"""The MLLM-MSR recommender (stage 3): p(Yes) for "will this user interact with this candidate?".

Score = p(Yes) / (p(Yes) + p(No)) from the logits of the first answer token; nothing is
generated or parsed. A user's candidates share the prompt up to the candidate, so the shared
scorer runs that prefix once per user (batched across users, left padded), keeps its KV cache,
and runs only the candidates' parts against copies of it (left padded inside the candidate
segment, with explicit positions, so every row's last token is its answer position). The naive
scorer (one full forward per candidate) is the reference the tests compare it with.

With collaborative tokens (``models.llm.collab``) both scorers and training read ``inputs_embeds``:
the token embeddings with the user's projected SASRec state spliced in at the prefix's
placeholder and the candidate's projected item embedding at the candidate part's.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from models.llm import prompts
from models.llm.generation import render
from models.llm.pipeline import TEXT
from models.llm.requests import Candidate, ScoreRequest
from models.registry import LoadedModel


@dataclass(frozen=True)
class ScorerConfig:
    users_per_batch: int = field(default=8, metadata={"help": "user prefixes run in one forward"})
    rows_per_batch: int = field(default=64, metadata={"help": "candidates run in one forward against copied prefix caches"})
    caption_chars: int = field(default=TEXT.caption_chars, metadata={"help": "longest item caption put in a candidate's part"})


def answer_token_id(tokenizer, word: str) -> int:
    """The id of the first token the model emits when its answer starts with ``word``.

    Read off the tokenization of a rendered answer start, so tokenizers that fold a leading space
    or a word-start marker into the token get the same id the model scores.
    """
    context = "<|im_start|>assistant\n"
    head = tokenizer(context, add_special_tokens=False)["input_ids"]
    full = tokenizer(context + word, add_special_tokens=False)["input_ids"]
    if full[:len(head)] == head and len(full) > len(head):
        return full[len(head)]
    return tokenizer(word, add_special_tokens=False)["input_ids"][0]


def yes_no_ids(tokenizer) -> tuple[int, int]:
    yes, no = answer_token_id(tokenizer, "Yes"), answer_token_id(tokenizer, "No")
    if yes == no:
        raise ValueError("the tokenizer maps 'Yes' and 'No' to the same first token; scores would be constant")
    return yes, no


def candidate_text(candidate: Candidate, caption_chars: int) -> str:
    caption = (candidate.caption or "")[:caption_chars] or None
    return prompts.describe_item(candidate.title, list(candidate.categories or []) or None,
                                 candidate.description, caption)


def split_prompt(lm: LoadedModel, user_part: str, candidate: Candidate,
                 caption_chars: int, collab: bool = False) -> tuple[str, str, object | None]:
    """The rendered prompt cut at the candidate: (shared prefix, candidate part, image or None)."""
    with_image = lm.is_vision and candidate.image is not None
    messages = prompts.recommend_messages(user_part, candidate_text(candidate, caption_chars), with_image, collab)
    rendered = render(lm, messages)
    head, tail = rendered.split(prompts.CANDIDATE_SPLIT)
    return head, tail, candidate.image if with_image else None


def encode(lm: LoadedModel, texts: list[str], images: list | None = None) -> dict:
    """Token ids (and pixel values) for pieces of prompts, no special tokens added, left padded."""
    if images:
        enc = lm.processor(text=texts, images=images, return_tensors="pt", padding=True, add_special_tokens=False)
    else:
        enc = lm.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    return {k: (v.to(lm.device, lm.dtype) if v.is_floating_point() else v.to(lm.device)) for k, v in enc.items()}


def full_inputs(lm: LoadedModel, user_part: str, candidate: Candidate, caption_chars: int,
                collab: bool = False) -> tuple[torch.Tensor, dict]:
    """One candidate's whole prompt as the naive scorer and training read it: the prefix and the
    candidate part tokenized apart (the very ids the shared scorer uses), then joined; plus the
    image inputs, if any."""
    head, tail, image = split_prompt(lm, user_part, candidate, caption_chars, collab)
    prefix = encode(lm, [head])
    rest = encode(lm, [tail], [image] if image is not None else None)
    ids = torch.cat([prefix["input_ids"], rest["input_ids"]], dim=1)
    return ids, {k: v for k, v in rest.items() if k not in ("input_ids", "attention_mask")}


def yes_probability(logits: torch.Tensor, yes: int, no: int) -> torch.Tensor:
    """p(Yes) / (p(Yes) + p(No)) = sigmoid(logit_yes - logit_no), in fp32."""
    return torch.sigmoid(logits[..., yes].float() - logits[..., no].float())


def token_inputs(model, collab, input_ids: torch.Tensor, vectors: torch.Tensor | None) -> dict:
    """What the model reads for these ids: the ids themselves, or with collaborative tokens the
    spliced embeddings (``vectors``: one raw collaborative vector per placeholder, row-major)."""
    if collab is None:
        return {"input_ids": input_ids}
    return {"inputs_embeds": collab.embeds(model, input_ids, vectors)}


class Recommender:
    """Scores candidates with a (vision-)language model, optionally carrying a LoRA adapter."""

    def __init__(self, lm: LoadedModel, config: ScorerConfig = ScorerConfig(), version: str = "base", collab=None,
                 fusion=None):
        """``collab``: a ``models.llm.collab.CollabTokens`` (its projector moves to the model's device);
        ``fusion``: the adapter's ``models.llm.fusion.FusedScorer``, which the stream ranks by when present."""
        self.lm, self.config, self.version, self.collab, self.fusion = lm, config, version, collab, fusion
        self.yes, self.no = yes_no_ids(lm.tokenizer)
        if collab is not None:
            collab.projector.to(lm.device).eval()

    def _split(self, request: ScoreRequest, candidate: Candidate):
        return split_prompt(self.lm, request.user_part, candidate, self.config.caption_chars, self.collab is not None)

    # -- reference --------------------------------------------------------------------------
    @torch.inference_mode()
    def score_naive(self, requests: list[ScoreRequest]) -> list[list[float]]:
        """One full forward per candidate over the same token ids the shared scorer uses."""
        out = []
        for request in requests:
            scores = []
            user = self.collab.user_inputs([request.history]) if self.collab is not None else None
            for candidate in request.candidates:
                ids, extra = full_inputs(self.lm, request.user_part, candidate, self.config.caption_chars,
                                         self.collab is not None)
                vectors = None if user is None else torch.cat([user, self.collab.item_inputs([candidate.item_id])])
                with self.lm.lock:
                    inputs = token_inputs(self.lm.model, self.collab, ids, vectors)
                    logits = self.lm.model(**inputs, logits_to_keep=1, **extra).logits[:, -1]
                scores.append(float(yes_probability(logits, self.yes, self.no)[0]))
            out.append(scores)
        return out

    # -- shared prefix ----------------------------------------------------------------------
    @torch.inference_mode()
    def score(self, requests: list[ScoreRequest]) -> list[list[float]]:
        """Scores per request, in order; prefixes computed once per user and batched across users."""
        out: list[list[float]] = [[] for _ in requests]
        todo = [i for i, r in enumerate(requests) if r.candidates]
        step = self.config.users_per_batch
        for start in range(0, len(todo), step):
            chunk = todo[start:start + step]
            for i, scores in zip(chunk, self._score_users([requests[i] for i in chunk])):
                out[i] = scores
        return out

    def _score_users(self, requests: list[ScoreRequest]) -> list[list[float]]:
        lm = self.lm
        pieces = [[self._split(r, c) for c in r.candidates] for r in requests]
        heads = [p[0][0] for p in pieces]
        prefix = encode(lm, heads)
        mask = prefix["attention_mask"]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        users = None if self.collab is None else self.collab.user_inputs([r.history for r in requests])
        with lm.lock:
            inputs = token_inputs(lm.model, self.collab, prefix["input_ids"], users)
            cached = lm.model(**inputs, attention_mask=mask, position_ids=positions,
                              use_cache=True, logits_to_keep=1).past_key_values
        layers = [(layer.keys, layer.values) for layer in cached.layers]
        lengths = mask.sum(-1)
        rows = [(u, c, tail, image, requests[u].candidates[c].item_id) for u, user_pieces in enumerate(pieces)
                for c, (_, tail, image) in enumerate(user_pieces)]
        out = [[0.0] * len(p) for p in pieces]
        # the processor takes images for all rows of a call or none; rows of like length share a
        # forward, so little of it is padding (the candidate parts differ by their captions)
        for with_image in (False, True):
            group = sorted((row for row in rows if (row[3] is not None) == with_image), key=lambda row: len(row[2]))
            for start in range(0, len(group), self.config.rows_per_batch):
                batch = group[start:start + self.config.rows_per_batch]
                probs = self._score_rows(batch, layers, mask, lengths)
                for (u, c, *_), p in zip(batch, probs.tolist()):
                    out[u][c] = p
        return out

    def _score_rows(self, batch, layers, prefix_mask, prefix_lengths) -> torch.Tensor:
        from transformers import DynamicCache

        lm = self.lm
        users = torch.tensor([row[0] for row in batch], device=lm.device)
        images = [row[3] for row in batch if row[3] is not None]
        enc = encode(lm, [row[2] for row in batch], images or None)
        tail_mask = enc.pop("attention_mask")
        items = None if self.collab is None else self.collab.item_inputs([row[4] for row in batch])
        cache = DynamicCache(ddp_cache_data=[(k.index_select(0, users), v.index_select(0, users)) for k, v in layers],
                             config=lm.model.config)
        positions = prefix_lengths[users, None] + (tail_mask.cumsum(-1) - 1).clamp(min=0)
        attention = torch.cat([prefix_mask.index_select(0, users), tail_mask], dim=1)
        with lm.lock:
            enc.update(token_inputs(lm.model, self.collab, enc.pop("input_ids"), items))
            logits = lm.model(**enc, attention_mask=attention, position_ids=positions, past_key_values=cache,
                              use_cache=True, logits_to_keep=1).logits[:, -1]
        return yes_probability(logits, self.yes, self.no)
