"""The summary-quality measures on a hand-made fixture, then the benchmark end to end on the tiny model."""
from __future__ import annotations

import math

import numpy as np
import pytest

from models.evaluation import summary_quality as sq
from models.llm.prompts import SUMMARY_PREFIX

TITLES = {"1": "Usual Suspects, The (1995)", "2": "Heat (1995)", "3": "Star Wars (1977)",
          "4": "Sabrina (1954)", "5": "Sabrina (1995)", "6": "Sense and Sensibility (1995)"}


def test_invented_titles_are_catalog_titles_the_user_never_saw():
    matcher = sq.TitleMatcher(TITLES)
    summary = (f"{SUMMARY_PREFIX} crime thrillers like The Usual Suspects and Heat, and space operas "
               "such as Star Wars (1977).")
    # "Heat" alone is an ordinary word and no title; "Star Wars (1977)" is named with its year
    assert matcher.invented(summary, seen={"3"}) == ["1"]
    assert matcher.invented(summary, seen={"1", "3"}) == []
    assert matcher.invented(summary, seen=set()) == ["1", "3"]
    assert matcher.invented(f"{SUMMARY_PREFIX} the heat of summer and star wars.", seen=set()) == []  # case matters
    # a name two items share is not invented when the user saw either of them
    assert matcher.invented(f"{SUMMARY_PREFIX} remakes such as Sabrina (1995).", seen={"4"}) == ["5"]
    assert matcher.invented(f"{SUMMARY_PREFIX} Austen: Sense and Sensibility.", seen={"6"}) == []


def test_genre_grounding_is_the_share_of_named_genres_the_items_have():
    summary = f"{SUMMARY_PREFIX} romantic comedies, science fiction and the occasional western."
    assert sq.genres_in(summary) == {"Romance", "Comedy", "Sci-Fi", "Western"}
    assert sq.grounding(summary, {"Comedy", "Romance", "Drama"}) == (2, 4)
    assert sq.grounding(f"{SUMMARY_PREFIX} a particular genre, era, and tone.", {"Drama"}) == (0, 0)
    assert sq.genres_in("Star Wars and film-noir; a warm drama") == {"Film-Noir", "Drama"}  # "Wars" is no "war"


def test_degenerate_reads_what_follows_the_fixed_opening():
    assert sq.degenerate(f"{SUMMARY_PREFIX} 1. 1.") == "too short (2 words)"
    assert sq.degenerate(f"{SUMMARY_PREFIX} comedy comedy comedy comedy drama.") is not None
    assert sq.degenerate(f"{SUMMARY_PREFIX} quiet dramas and romantic comedies of the 1990s.") is None


def test_rank_metrics_by_hand():
    # five unit vectors at angles 0, 10, 20, 30, 40 degrees; the query at 0 ranks them in that order
    angles = np.radians([0, 10, 20, 30, 40])
    items = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    ids = ["a", "b", "c", "d", "e"]
    query = np.array([1.0, 0.0], dtype=np.float32)
    # "a" excluded: the ranking is b, c, d, e; targets c (rank 2) and e (rank 4); k = 3
    hit = sq.rank_targets(query, items, ids, exclude=["a"], targets=["c", "e"], k=3)
    assert hit.hr == pytest.approx(0.5)
    assert hit.ndcg == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))
    full = sq.rank_targets(query, items, ids, exclude=[], targets=["a", "b"], k=2)
    assert (full.hr, full.ndcg) == (pytest.approx(1.0), pytest.approx(1.0))
    with pytest.raises(ValueError):
        sq.rank_targets(query, items, ids, exclude=[], targets=["zz"], k=2)


def test_template_profile_and_recent_titles():
    records = [{"title": "Heat (1995)", "categories": ["Action", "Crime"]},
               {"title": "Fargo (1996)", "categories": ["Crime", "Drama"]},
               {"title": "Vertigo (1958)", "categories": ["Mystery", "Thriller"]}]
    assert sq.template_profile(records) == f"{SUMMARY_PREFIX} Crime, Action and Drama films from the 1990s."
    assert sq.recent_titles_text(records, n=2) == "Fargo (1996); Vertigo (1958)"


def test_scorer_pairs_each_summary_with_the_next_block():
    from bench.summary_quality import Scorer, UserWindow

    class WordEmbedder:
        """One axis per word: a summary that names a title's word points at that item."""

        words = ["alpha", "beta", "gamma", "delta", "omega", "zeta", "eta"]

        def embed(self, texts):
            out = np.array([[1.0 if w in t.lower() else 0.0 for w in self.words] + [1e-3] for t in texts],
                           dtype=np.float32)
            return out / np.linalg.norm(out, axis=1, keepdims=True)

    catalog = {str(n): {"title": f"{w.title()} ({1990 + n})", "categories": ["Drama"]}
               for n, w in enumerate(WordEmbedder.words)}
    scorer = Scorer(catalog, WordEmbedder(), k=1)
    window = UserWindow("u", ["0", "1", "2", "3", "4", "5"])  # blocks 0-1-2 and 3-4-5
    # S_1 names "delta" (item 3, in block 2): HR@1 = 1/3; it also invents "Omega (1994)" and names Comedy
    result = scorer.user(window, [f"{SUMMARY_PREFIX} delta dramas and comedies like Omega (1994)."])
    assert result["hr"] == pytest.approx(1 / 3) and result["invented"] == 1
    assert (result["grounded"], result["named"]) == (1, 2) and result["degenerate"] == 0


@pytest.mark.slow
def test_benchmark_end_to_end_on_the_tiny_model(tmp_path):
    from bench.summary_quality import Options, measure

    options = Options(split="test", users=3, blocks=2, models=("tiny-random-llava",), variants=("default", "numbered"),
                      captions=(False, True), caption_tokens=4, max_new_tokens=6, batch_size=4, k=50, bootstrap=20,
                      cache=str(tmp_path / "cache.json"))
    out = tmp_path / "result.json"
    result = measure(options, out=str(out), log=lambda *_: None)
    names = [r["name"] for r in result["rows"]]
    assert names[:2] == ["template profile", "recent titles"] and len(names) == 2 + 2 * 2
    for r in result["rows"]:
        assert r["users"] == 3 and r["summaries"] == 6 and 0 <= r["hr"] <= 1 and 0 <= r["degenerate_rate"] <= 1
        assert r["hr_ci"][0] <= r["hr"] <= r["hr_ci"][1]
    llm = result["rows"][2]
    assert llm["seconds_per_summary"] > 0 and "vs template profile" in llm and "vs recent titles" in llm
    assert out.is_file()
    # validation and test users never overlap
    validation = measure(Options(**{**options.__dict__, "split": "validation", "models": ()}), log=lambda *_: None)
    assert not set(validation["user_ids"]) & set(result["user_ids"])
