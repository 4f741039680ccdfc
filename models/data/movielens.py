"""MovieLens-100K as shipped in the recbole wheel, turned into mmsr item and interaction events."""
from __future__ import annotations

import csv
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Iterator


def dataset_dir() -> Path:
    try:
        return Path(str(resources.files("recbole") / "dataset_example" / "ml-100k"))
    except ModuleNotFoundError:
        raise FileNotFoundError("MovieLens-100K ships in the recbole package: pip install --no-deps recbole") from None


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _rows(path: Path) -> Iterator[dict]:
    with open(path, encoding="latin-1", newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        header = [h.split(":")[0] for h in next(reader)]
        for row in reader:
            yield dict(zip(header, row))


def items(event_time: str = "1997-09-01T00:00:00Z") -> Iterator[dict]:
    for row in _rows(dataset_dir() / "ml-100k.item"):
        year = row.get("release_year", "").strip()
        title = row["movie_title"].strip() + (f" ({year})" if year else "")
        yield {"item_id": row["item_id"], "op": "upsert", "title": title,
               "categories": row.get("class", "").split(), "event_time": event_time}


def interactions() -> list[dict]:
    """All ratings as interaction events in time order (stable by file order on ties)."""
    rows = sorted(_rows(dataset_dir() / "ml-100k.inter"), key=lambda r: float(r["timestamp"]))
    return [{"user_id": r["user_id"], "item_id": r["item_id"], "type": "rating", "value": float(r["rating"]),
             "event_time": rfc3339(float(r["timestamp"])), "event_id": f"ml100k-{r['user_id']}-{r['item_id']}"}
            for r in rows]
