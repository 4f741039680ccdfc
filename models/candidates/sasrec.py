"""SASRec (Kang & McAuley, 2018) in torch: causal self-attention over the last ``max_len`` items,
learned positions; a candidate's score is the dot product of the last position's output with the
candidate's embedding. Three objectives (``SASRecConfig.loss``): the paper's binary cross-entropy
with one sampled negative per position; softmax cross-entropy over the whole catalog (as
RecBole's SASRec), which is what a model that ranks the whole catalog needs (the stream's
sequential source); and that softmax over the next item and a few hundred uniform negatives
shared by the batch, whose cost does not grow with the catalog. Also a baseline of the paper protocol (``models.evaluation.baselines``).
"""
from __future__ import annotations

import random
from typing import Callable

import torch
from torch import nn

from models.config import SASRecConfig
from models.device import pick_device


def training_windows(seqs: list[list[int]], max_len: int, whole: bool) -> tuple[list[list[int]], list[int]]:
    """SASRec's training windows of at most max_len+1 items, and the sequence each came from.

    ``whole``: a long history is cut from its end into consecutive windows that share one item,
    so every transition is learned exactly once; otherwise only the last window is kept and a
    heavy user's earlier items never reach the model."""
    span = max_len + 1
    out, owner = [], []
    for n, seq in enumerate(seqs):
        end = len(seq)
        while end >= 2:
            out.append(seq[max(end - span, 0):end])
            owner.append(n)
            if not whole:
                break
            end -= span - 1
    return out, owner


class SASRec(nn.Module):
    def __init__(self, n_items: int, config: SASRecConfig):
        super().__init__()
        self.config = config
        self.items = nn.Embedding(n_items + 1, config.hidden, padding_idx=0)  # 0 is padding
        if config.loss in ("ce", "sampled"):  # unit-variance inputs after the sqrt(hidden) scale, logits of order 1
            with torch.no_grad():
                self.items.weight.normal_(0.0, config.hidden ** -0.5)
                self.items.weight[0].zero_()
        self.positions = nn.Embedding(config.max_len, config.hidden)
        self.dropout = nn.Dropout(config.dropout)
        layer = nn.TransformerEncoderLayer(config.hidden, config.heads, config.hidden, config.dropout,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, config.blocks, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.hidden)

    def forward(self, seqs: torch.Tensor) -> torch.Tensor:
        """(batch, max_len) left-padded item indices -> (batch, max_len, hidden)."""
        length = seqs.shape[1]
        x = self.items(seqs) * self.config.hidden ** 0.5 + self.positions(torch.arange(length, device=seqs.device))
        x = self.dropout(x) * (seqs > 0).unsqueeze(-1)
        causal = torch.triu(torch.ones(length, length, dtype=torch.bool, device=seqs.device), 1)
        x = self.encoder(x, mask=causal)
        return self.norm(x) * (seqs > 0).unsqueeze(-1)


class SASRecScorer:
    def __init__(self, sequences: dict[str, list[str]], config: SASRecConfig = SASRecConfig(), progress: bool = False,
                 on_epoch: Callable[[int, "SASRecScorer"], bool] | None = None):
        """``on_epoch(epoch, scorer)`` runs after each epoch (the model in eval mode); True stops
        training there (early stopping on a validation set lives with the caller)."""
        self.config = config
        vocabulary = sorted({i for seq in sequences.values() for i in seq})
        self.index = {item: n + 1 for n, item in enumerate(vocabulary)}
        torch.manual_seed(config.seed)
        self.device = pick_device(config.device)
        self.model = SASRec(len(vocabulary), config).to(self.device)
        self.on_epoch = on_epoch
        self.losses: list[float] = []  # one per epoch, filled while training (on_epoch reads it)
        self._train([[self.index[i] for i in seq] for seq in sequences.values() if len(seq) > 1], progress)

    def _pad(self, seq: list[int]) -> list[int]:
        seq = seq[-self.config.max_len:]
        return [0] * (self.config.max_len - len(seq)) + seq

    def _train(self, seqs: list[list[int]], progress: bool) -> None:
        from tqdm.auto import tqdm

        c, rng = self.config, random.Random(self.config.seed)
        n_items = len(self.index)
        windows, owner = training_windows(seqs, c.max_len, c.whole_sequences)
        inputs = torch.tensor([self._pad(s[:-1]) for s in windows], device=self.device)
        target_rows = [self._pad(s[1:]) for s in windows]  # host copy: negatives are drawn in Python
        targets = torch.tensor(target_rows, device=self.device)
        seen = [set(s) for s in seqs]
        optimizer = torch.optim.Adam(self.model.parameters(), lr=c.lr, betas=(0.9, 0.98))
        self.model.train()
        for epoch in tqdm(range(c.epochs), desc="sasrec", disable=not progress):
            order = list(range(len(windows)))
            rng.shuffle(order)
            total = 0.0
            for start in range(0, len(order), c.batch_size):
                rows = order[start:start + c.batch_size]
                x, pos = inputs[rows], targets[rows]
                h = self.model(x)
                mask = pos > 0
                if c.loss == "ce":
                    logits = h[mask] @ self.model.items.weight.T
                    logits[:, 0] = -torch.inf  # padding is never a next item
                    loss = nn.functional.cross_entropy(logits, pos[mask])
                elif c.loss == "sampled":
                    loss = self._sampled_loss(h[mask], pos[mask], n_items)
                else:
                    neg = torch.tensor([[self._negative(rng, seen[owner[r]], n_items) if p else 0
                                         for p in target_rows[r]] for r in rows], device=self.device)
                    pos_logit = (h * self.model.items(pos)).sum(-1)
                    neg_logit = (h * self.model.items(neg)).sum(-1)
                    loss = (nn.functional.binary_cross_entropy_with_logits(pos_logit[mask], torch.ones_like(pos_logit[mask]))
                            + nn.functional.binary_cross_entropy_with_logits(neg_logit[mask],
                                                                             torch.zeros_like(neg_logit[mask])))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(rows)
            self.losses.append(total / len(windows))
            if self.on_epoch is not None:
                self.model.eval()
                stop = self.on_epoch(epoch, self)
                self.model.train()
                if stop:
                    break
        self.model.eval()

    def _sampled_loss(self, hidden: torch.Tensor, targets: torch.Tensor, n_items: int) -> torch.Tensor:
        """Cross-entropy of the next item against ``negatives`` uniform items shared by the batch
        (uniform draws need no log-probability correction); a draw equal to a row's target is masked."""
        negatives = torch.randint(1, n_items + 1, (self.config.negatives,), device=hidden.device)
        weights = self.model.items.weight
        positive = (hidden * weights[targets]).sum(-1, keepdim=True)
        negative = hidden @ weights[negatives].T
        negative = negative.masked_fill(negatives.unsqueeze(0) == targets.unsqueeze(1), -torch.inf)
        logits = torch.cat([positive, negative], dim=1)
        return nn.functional.cross_entropy(logits, torch.zeros(len(targets), dtype=torch.long, device=hidden.device))

    @staticmethod
    def _negative(rng: random.Random, seen: set[int], n_items: int) -> int:
        """An item the user has not seen; any item for a user who has seen them all (the loop
        below never ended for such a user: training hung)."""
        if len(seen) >= n_items:
            return rng.randint(1, n_items)
        while True:
            candidate = rng.randint(1, n_items)
            if candidate not in seen:
                return candidate

    @torch.no_grad()
    def score(self, user_id: str, history: list[str], candidates: list[str]) -> list[float]:
        seq = torch.tensor([self._pad([self.index[i] for i in history if i in self.index])], device=self.device)
        h = self.model(seq)[0, -1]
        ids = torch.tensor([self.index.get(c, 0) for c in candidates], device=self.device)
        scores = self.model.items(ids) @ h
        # an item never seen in training has no embedding: it ranks last
        scores[ids == 0] = -1e9
        return scores.tolist()
