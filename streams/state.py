"""Per-user and per-item state as stored in the Faust tables, and the pure rules that update it.

Kept free of Faust so the effectively-once rule (skip an interaction whose offset was applied)
can be tested without a broker.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field


@dataclass
class UserState:
    user_id: str
    interaction_count: int = 0
    history: list[dict] = field(default_factory=list)  # newest last: item_id, type, value, event_time
    seen: list[str] = field(default_factory=list)  # distinct item ids, oldest first, capped
    pending_block: list[dict] = field(default_factory=list)  # items waiting for the next summary update
    summary: str | None = None
    summary_version: int = 0
    partition: int = -1  # source partition of the applied offsets (state is co-partitioned with it)
    last_offset: int = -1  # offset of the last applied interaction in that partition
    unknown_items: int = 0
    backfill_pending: bool = False  # touched by stale events; owes one list at the end of a backfill
    owed: dict | None = None  # the trigger (``Trigger.to_state``) of a list not yet published
    summary_requested: int = 0  # state role: the version an outstanding summary request will reach
    summary_requested_at: float = 0.0  # when it was sent (epoch seconds): re-sent after a timeout

    @classmethod
    def from_dict(cls, data: dict | None, user_id: str) -> "UserState":
        if not data:
            return cls(user_id=user_id)
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def to_dict(self) -> dict:
        """Shallow: list entries are never mutated after they are appended, so copying the lists
        is enough (``dataclasses.asdict`` deep-copied them and was a third of the ingest time)."""
        data = dict(self.__dict__)
        for name in ("history", "seen", "pending_block"):
            data[name] = list(data[name])
        return data

    def already_applied(self, partition: int, offset: int) -> bool:
        """A redelivered interaction (after a crash before the offset commit) is never applied twice."""
        return partition == self.partition and offset <= self.last_offset

    def apply(self, event: dict, partition: int, offset: int, *, tail: int, seen_cap: int, pending_cap: int) -> bool:
        """Apply one interaction; True when its item is new to this user.

        The pending block keeps its entries (with their offsets) until the summarizer consumes
        full blocks; ``pending_cap`` bounds it (the block size when summaries are off). A repeat
        of an item the user has seen does not enter it: summaries describe distinct items, as the
        training and evaluation histories do (``models.candidates.sequences.sequences_of``).
        """
        entry = {"item_id": event["item_id"], "type": event["type"], "value": event.get("value"),
                 "event_time": event["event_time"]}
        self.interaction_count += 1
        self.history.append(entry)
        del self.history[:-tail]
        is_new = event["item_id"] not in self.seen
        if is_new:
            self.seen.append(event["item_id"])
            del self.seen[:-seen_cap]
            self.pending_block.append({**entry, "offset": offset})
            del self.pending_block[:-max(pending_cap, 1)]
        self.partition, self.last_offset = partition, offset
        return is_new

    def full_blocks(self, size: int) -> list[list[dict]]:
        """The pending entries that make whole blocks, oldest first."""
        whole = len(self.pending_block) - len(self.pending_block) % size
        return [self.pending_block[i:i + size] for i in range(0, whole, size)]

    def record_summary(self, summary: str, size: int) -> None:
        """One block consumed: the new summary replaces the old and the version counts blocks."""
        self.summary = summary
        self.summary_version += 1
        del self.pending_block[:size]

    def recent_items(self, n: int) -> list[str]:
        return [h["item_id"] for h in self.history[-n:]] if n > 0 else []


def content_hash(event: dict) -> str:
    """Hash of what an item's text and image are derived from; unchanged content is not re-embedded."""
    keyed = {k: event.get(k) for k in ("title", "description", "categories", "image")}
    return hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:16]
