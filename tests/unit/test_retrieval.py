import numpy as np
import pytest

from models.candidates.retrieval import CatalogIndex, Popularity, recency_weights, user_vector


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


def test_popularity_ranks_catalog_items_by_count_with_ties_by_id(index):
    pop = Popularity()
    for item, n in [("north", 5), ("east", 3), ("ghost", 9), ("east2", 3)]:
        pop.add(item, n)
    assert [h.item_id for h in pop.top_k(3, allowed=index)] == ["north", "east", "east2"]  # 'ghost': no item
    assert [h.item_id for h in pop.top_k(2, exclude=["north"], allowed=index)] == ["east", "east2"]


def test_a_stream_ranking_moves_only_when_ranked_and_keeps_the_top():
    pop = Popularity(auto_rank=False, keep=2)
    for item, n in [("a", 1), ("b", 5), ("c", 3)]:
        pop.set(item, n)
    assert [h.item_id for h in pop.top_k(3)] == ["b", "c"]  # first use ranks; only the top 2 are kept
    pop.set("a", 9)
    assert [h.item_id for h in pop.top_k(3)] == ["b", "c"]  # the last ranking, until the timer ranks again
    pop.rank()
    assert [h.item_id for h in pop.top_k(3)] == ["a", "b"]
    pop.remove("a")
    pop.rank()
    assert [h.item_id for h in pop.top_k(3)] == ["b", "c"]


def test_the_catalog_s_known_ids_follow_upserts_and_removals():
    from streams.metrics import Metrics
    from streams.catalog import Catalog

    catalog = Catalog(Metrics())
    assert "a" not in catalog.known()  # no index yet: nothing known
    catalog.index = CatalogIndex(dim=2)
    known = catalog.known()
    catalog.upsert("a", unit(1, 0))
    catalog.upsert("b", unit(0, 1))
    assert "a" in known and "b" in known and "c" not in known  # live: taken before the upserts
    catalog.remove("a")
    assert "a" not in known and [i for i in ["a", "b", "c"] if i in known] == [i for i in ["a", "b", "c"] if i in catalog]
