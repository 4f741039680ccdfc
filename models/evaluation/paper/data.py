"""The protocol's users: each one's history, test item, validation item and candidates."""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path


from models.candidates.sequences import sequences_of
from models.config import EvalConfig


@dataclass
class Dataset:
    items: dict[str, dict]  # item_id -> {"title", "categories", "description"}
    sequences: dict[str, list[str]]  # user_id -> item ids in time order
    name: str = "events"  # in the report: "movielens-100k", "movielens-1m", or "events" (files)

    @classmethod
    def movielens(cls, dataset: str = "ml-100k") -> "Dataset":
        from models.data import movielens

        items = {i["item_id"]: {"title": i["title"], "categories": i["categories"]} for i in movielens.items(dataset)}
        return cls(items, sequences_of(movielens.interactions(dataset)), f"movielens-{dataset.removeprefix('ml-')}")

    @classmethod
    def from_events(cls, items_file: Path, interactions_file: Path) -> "Dataset":
        """JSON-lines files of item and interaction events (the topics' schemas), e.g. a replay log."""
        import schemas

        items = {}
        for line in Path(items_file).read_text().splitlines():
            if line.strip():
                item = schemas.validate("item", json.loads(line))
                items[item["item_id"]] = {"title": item["title"], "categories": item.get("categories", []),
                                          "description": item.get("description")}
        events = [schemas.validate("interaction", json.loads(line))
                  for line in Path(interactions_file).read_text().splitlines() if line.strip()]
        events.sort(key=lambda e: schemas.parse_time(e["event_time"]))
        return cls(items, sequences_of(e for e in events if e["item_id"] in items))


def dataset_of(catalog: list[dict], events: list[dict]) -> Dataset:
    """A dataset from item events and time-ordered interaction events (``mmsr train --until``'s cut log)."""
    items = {i["item_id"]: {"title": i.get("title") or i["item_id"], "categories": i.get("categories") or [],
                            "description": i.get("description")} for i in catalog if i.get("op") != "delete"}
    return Dataset(items, sequences_of(e for e in events if e["item_id"] in items))


@dataclass
class UserCase:
    user_id: str
    history: list[str]  # everything before the test item
    window: list[str]  # the summarized part of the history (whole blocks)
    test_item: str
    test_negatives: dict[int, list[str]]  # seed -> negatives
    train_pairs: list[tuple[int, str, str]]  # (summary index t, positive, negative): S_t then block t+1's first item
    validation: tuple[int, str, list[str]] | None = None  # (summary index, the last history item, negatives)

    def before(self, item_id: str) -> list[str]:
        """The history before one of its items (what the user had done when they took it)."""
        return self.history[:self.history.index(item_id)]

    def candidates(self) -> list[str]:
        """The positive and every seed's negatives, each once: one scoring request per user."""
        out = [self.test_item]
        for negatives in self.test_negatives.values():
            out += [n for n in negatives if n not in out]
        return out


def pre_validation(data: Dataset) -> dict[str, list[str]]:
    """Every user's items before their validation and test items: what collaborative features learn from."""
    return {u: seq[:-2] for u, seq in data.sequences.items()}


def candidate_stage(data: Dataset):
    """The co-occurrence source over the pre-validation sequences (``models.evaluation.prequential``'s replay state)."""
    from models.candidates.cooccurrence import CooccurrenceConfig
    from models.evaluation.prequential import SourceState

    state = SourceState(CooccurrenceConfig())
    for user, seq in sorted(pre_validation(data).items()):
        for item in seq:
            state.apply_item(user, item)
    return state


def build_cases(data: Dataset, config: EvalConfig, stage=None) -> list[UserCase]:
    """The users' cases; ``stage`` is ``candidate_stage(data)`` if the caller has built it already."""
    rng = random.Random(config.seed)
    need = config.block + 1  # at least one summarized block before the test item
    eligible = sorted((u for u, seq in data.sequences.items() if len(seq) >= need), key=_natural)
    chosen = sorted(rng.sample(eligible, min(config.users or len(eligible), len(eligible))), key=_natural)
    catalog = sorted(data.items, key=_natural)
    if stage is None and config.hard_negatives > 0:
        stage = candidate_stage(data)
    hard_negatives = stage is not None and config.hard_negatives > 0
    cases = []
    for user in chosen:
        seq = data.sequences[user]
        history, test_item = seq[:-1], seq[-1]
        window = history[-config.window:]
        window = window[len(window) % config.block:]
        touched = set(seq)
        negatives = {s: sample_negatives(random.Random(f"{s}-{user}"), catalog, touched, config.negatives)
                     for s in config.seeds}
        hard = [i for i in stage.cooccurrence(user, config.hard_pool + len(seq)) if i not in touched][:config.hard_pool] \
            if hard_negatives else []

        def negative(count: int) -> list[str]:
            """``count`` negatives, each from the hard pool with probability ``hard_negatives``."""
            out: list[str] = []
            for _ in range(count):
                pool = [i for i in hard if i not in out]
                if pool and rng.random() < config.hard_negatives:
                    out.append(rng.choice(pool))
                else:
                    out += sample_negatives(rng, catalog, touched | set(out), 1)
            return out

        blocks = len(window) // config.block
        validation = (blocks - 2, window[-1], negative(config.validation_negatives)) if blocks >= 2 else None
        pairs = []
        for t in range(blocks - 1):
            start = (t + 1) * config.block
            for positive in window[start:start + min(config.next_items, config.block)]:
                if validation is None or positive != validation[1]:
                    pairs.append((t, positive, negative(1)[0]))
        cases.append(UserCase(user, history, window, test_item, negatives, pairs, validation))
    return cases


def sample_negatives(rng: random.Random, catalog: list[str], exclude: set[str], n: int) -> list[str]:
    out: list[str] = []
    while len(out) < n:
        item = rng.choice(catalog)
        if item not in exclude and item not in out:
            out.append(item)
    return out


def _natural(key: str):
    return (0, int(key), "") if key.isdigit() else (1, 0, key)
