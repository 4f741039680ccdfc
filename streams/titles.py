"""Item titles for printing, read once from the items topic (the catalog's source of truth)."""
from __future__ import annotations

import json

from streams.kafka.client import read_all


class TitleCache:
    def __init__(self, bootstrap_servers: str, topic: str, **config):
        self._bootstrap, self._topic, self._config = bootstrap_servers, topic, config
        self._titles: dict[str, str] | None = None

    def load(self) -> dict[str, str]:
        titles: dict[str, str] = {}
        for msg in read_all(self._bootstrap, self._topic, timeout=15.0, idle=1.0, **self._config):
            try:
                event = json.loads(msg.value())
            except (TypeError, ValueError):
                continue
            if isinstance(event, dict) and "item_id" in event:
                if event.get("op") == "delete":
                    titles.pop(str(event["item_id"]), None)
                elif "title" in event:
                    titles[str(event["item_id"])] = str(event["title"])
        return titles

    def get(self, item_id: str) -> str:
        if self._titles is None:
            self._titles = self.load()
        return self._titles.get(item_id, f"item {item_id}")
