"""Interaction logs as item sequences, shared by the candidate sources and the protocols."""
from __future__ import annotations


def sequences_of(events) -> dict[str, list[str]]:
    """Time-ordered item ids per user, repeats of an item kept once (its first time)."""
    out: dict[str, list[str]] = {}
    for e in events:
        seq = out.setdefault(e["user_id"], [])
        if e["item_id"] not in seq:
            seq.append(e["item_id"])
    return out
