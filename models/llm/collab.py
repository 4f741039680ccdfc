"""Collaborative tokens: the sequential model's view of the user and the candidate, as soft tokens.

CoLLM (Zhang et al.) and LLaRA (Liao et al.) bring collaborative embeddings into an LLM the way
LLaVA brings images in: a small projector maps them into the LM's token-embedding space, and
the projected vectors replace the embeddings of placeholder tokens in ``inputs_embeds``. Here:

- the user's vector is the served SASRec's hidden state after the user's recent items (the
  state it ranks the catalog with), the candidate's its SASRec item embedding;
- the projector is a 2-layer MLP to the LM's hidden size whose outputs are rescaled to the mean
  norm of the LM's token embeddings, so a soft token is as loud as a word;
- the placeholder is one added special token (``prompts.COLLAB_TOKEN``) that ``prompts.clean``
  removes from untrusted text, so only the prompt builder can place one; the user's token sits in
  the shared prefix and the candidate's in the candidate part, so shared-prefix scoring still works.

A projector is trained against one SASRec; it records that model's version and refuses any other
(``VersionMismatch``): an item table from another training run has unrelated coordinates, and
scoring with it would be silently wrong.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from models.llm.prompts import COLLAB_TOKEN

PROJECTOR_WEIGHTS = "collab-projector.safetensors"
PROJECTOR_CONFIG = "mmsr-collab.json"


class VersionMismatch(ValueError):
    """The sequential model serving is not the one the projector was trained with."""


@dataclass(frozen=True)
class ProjectorConfig:
    input_dim: int = field(metadata={"help": "width of the sequential model's vectors"})
    output_dim: int = field(metadata={"help": "the LM's hidden size"})
    token_norm: float = field(metadata={"help": "mean L2 norm of the LM's token embeddings (the outputs' norm)"})
    sequential_version: str = field(metadata={"help": "version of the sequential model the projector was trained on"})
    hidden_dim: int = field(default=0, metadata={"help": "MLP width (0: the LM's hidden size)"})


class Projector(nn.Module):
    def __init__(self, config: ProjectorConfig):
        super().__init__()
        self.config = config
        hidden = config.hidden_dim or config.output_dim
        self.mlp = nn.Sequential(nn.Linear(config.input_dim, hidden), nn.GELU(), nn.Linear(hidden, config.output_dim))

    @classmethod
    def for_models(cls, lm, sequential, hidden_dim: int = 0, seed: int = 0) -> "Projector":
        """A fresh projector from ``sequential``'s width to ``lm``'s token embeddings."""
        table = lm.model.get_input_embeddings().weight.detach().float()
        torch.manual_seed(seed)
        return cls(ProjectorConfig(sequential.config.hidden, table.shape[1], float(table.norm(dim=-1).mean()),
                                   sequential.version, hidden_dim))

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        out = self.mlp(vectors)
        return out * (self.config.token_norm / out.norm(dim=-1, keepdim=True).clamp_min(1e-6))

    def save_pretrained(self, directory: Path | str) -> None:
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()},
                  str(directory / PROJECTOR_WEIGHTS))
        (directory / PROJECTOR_CONFIG).write_text(json.dumps(asdict(self.config), indent=2))

    @classmethod
    def from_pretrained(cls, directory: Path | str) -> "Projector":
        from safetensors.torch import load_file

        directory = Path(directory)
        projector = cls(ProjectorConfig(**json.loads((directory / PROJECTOR_CONFIG).read_text())))
        projector.load_state_dict(load_file(str(directory / PROJECTOR_WEIGHTS)))
        return projector.eval()


def has_projector(directory: Path | str) -> bool:
    return (Path(directory) / PROJECTOR_CONFIG).is_file()


def placeholder_id(tokenizer) -> int:
    """The placeholder's token id, added to the tokenizer on first use (the model's embedding table is
    not resized: the placeholder's embedding is always replaced)."""
    if COLLAB_TOKEN not in tokenizer.get_vocab():
        from tokenizers import AddedToken

        tokenizer.add_tokens([AddedToken(COLLAB_TOKEN, special=True, normalized=False)])
    return tokenizer.convert_tokens_to_ids(COLLAB_TOKEN)


class CollabTokens:
    """A projector paired with the sequential model it was trained on, over one LM's tokenizer."""

    def __init__(self, projector: Projector, sequential, tokenizer):
        if projector.config.sequential_version != sequential.version:
            raise VersionMismatch(
                f"the re-ranker's projector was trained with sequential model {projector.config.sequential_version!r}, "
                f"but {sequential.version!r} is serving; retrain the projector (mmsr train --collab) or serve "
                "the sequential model it was trained with")
        self.projector, self.sequential = projector, sequential
        self.token_id = placeholder_id(tokenizer)

    @property
    def version(self) -> str:
        return self.projector.config.sequential_version

    def user_inputs(self, histories: Sequence[Sequence[str]]) -> torch.Tensor:
        """(users, d): SASRec's last hidden state after each history (zeros when none of it is known)."""
        hidden, known = self.sequential.user_states([list(h) for h in histories])
        out = torch.zeros(len(histories), self.sequential.config.hidden)
        out[known] = hidden
        return out

    @torch.no_grad()
    def item_inputs(self, item_ids: Sequence[str]) -> torch.Tensor:
        """(items, d): SASRec's item embeddings (the padding row, all zeros, for unknown items)."""
        ids = torch.tensor([self.sequential.index.get(i, 0) for i in item_ids], dtype=torch.long)
        return self.sequential.model.items.weight[ids].float()

    def embeds(self, model, input_ids: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """``input_ids``' token embeddings with the placeholders, in row-major order, replaced by the
        projected ``inputs`` (one row per placeholder)."""
        embedding = model.get_input_embeddings()
        table = embedding(input_ids.clamp(max=embedding.num_embeddings - 1))
        mask = input_ids == self.token_id
        if int(mask.sum()) != inputs.shape[0]:
            raise ValueError(f"{int(mask.sum())} collaborative placeholders for {inputs.shape[0]} vectors")
        projected = self.projector(inputs.to(table.device, next(self.projector.parameters()).dtype))
        return table.masked_scatter(mask.unsqueeze(-1), projected.to(table.dtype))
