"""Benchmarks that write their figures as JSON under bench/results."""
from __future__ import annotations

import json
from itertools import islice
from pathlib import Path


def write_result(out: str | Path, result: dict, show: bool = True) -> None:
    """The figures to ``out`` (its folder made; replaced whole, so a benchmark killed while writing
    leaves the previous figures) and, unless ``show`` is false, to stdout, as every benchmark
    reports them."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial")
    partial.write_text(json.dumps(result, indent=2) + "\n")
    partial.replace(out)
    if show:
        print(json.dumps(result, indent=2))


def first_blocks(users: int, block: int) -> list[list[str]]:
    """The first ``block`` items each of MovieLens-100K's first ``users`` users rated (users in the
    order of their first rating), as the summarizer's item texts."""
    from models.data import movielens
    from models.llm.prompts import describe_item

    catalog = {i["item_id"]: i for i in movielens.items()}
    blocks: dict[str, list[str]] = {}
    for event in movielens.interactions():
        items = blocks.setdefault(event["user_id"], [])
        if len(items) < block:
            item = catalog[event["item_id"]]
            items.append(describe_item(item["title"], item["categories"]))
        first = list(islice(blocks.values(), users))
        if len(first) == users and all(len(b) == block for b in first):
            break
    return list(blocks.values())[:users]
