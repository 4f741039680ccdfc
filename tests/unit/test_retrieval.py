import numpy as np
import pytest

from models.retrieval import CatalogIndex, Popularity, recency_weights, recommend, user_vector


def unit(*v):
    a = np.asarray(v, dtype=np.float32)
    return a / np.linalg.norm(a)


@pytest.fixture
def index():
    idx = CatalogIndex(dim=2, capacity=2)  # small capacity exercises growth
    idx.upsert("east", unit(1, 0))
    idx.upsert("north", unit(0, 1))
    idx.upsert("northeast", unit(1, 1))
    idx.upsert("east2", unit(1, 0.1))
    return idx


def test_top_k_orders_by_cosine_and_excludes(index):
    hits = index.top_k(unit(1, 0), 3)
    assert [h.item_id for h in hits] == ["east", "east2", "northeast"]
    assert hits[0].score == pytest.approx(1.0)
    assert [h.item_id for h in index.top_k(unit(1, 0), 2, exclude=["east"])] == ["east2", "northeast"]


def test_remove_frees_the_row_and_reuse_keeps_ids_right(index):
    index.remove("east")
    assert "east" not in index and len(index) == 3
    index.upsert("west", unit(-1, 0))
    assert [h.item_id for h in index.top_k(unit(-1, 0), 1)] == ["west"]
    assert "east" not in [h.item_id for h in index.top_k(unit(1, 0), 10)]


def test_recency_weights_halve_every_half_life():
    w = recency_weights(5, half_life=2)
    assert w[-1] == pytest.approx(1.0) and w[-3] == pytest.approx(0.5) and w[0] == pytest.approx(0.25)


def test_user_vector_leans_to_recent_items(index):
    vec = user_vector(index, ["north", "east"], half_life=1.0)
    assert vec @ unit(1, 0) > vec @ unit(0, 1)
    assert user_vector(index, ["unknown"], 1.0) is None


def test_recommend_excludes_history_and_falls_back_to_popularity(index):
    pop = Popularity()
    for item, n in [("north", 5), ("east", 3), ("ghost", 9)]:
        pop.add(item, n)
    strategy, hits = recommend(index, pop, ["east"], seen=["east"], k=2, half_life=5)
    assert strategy == "similarity" and [h.item_id for h in hits] == ["east2", "northeast"]
    strategy, hits = recommend(index, pop, ["unknown"], seen=["unknown"], k=2, half_life=5)
    assert strategy == "popularity"
    assert [h.item_id for h in hits] == ["north", "east"]  # 'ghost' is not in the catalog


def test_similarity_is_topped_up_when_the_catalog_runs_short(index):
    pop = Popularity()
    pop.add("north", 1)
    _, hits = recommend(index, pop, ["east"], seen=["east", "east2", "northeast"], k=3, half_life=5)
    assert [h.item_id for h in hits] == ["north"]
