"""EASE: the closed form against a per-item ridge regression, serving, and the retrieval directory."""
import json

import numpy as np
import pytest

from models.config import EaseConfig, SequentialSourceConfig
from models.candidates.ease import Ease
from models.candidates.sequential import SequentialRetriever, train_into

SEQUENCES = {"u0": ["a", "b", "c"], "u1": ["a", "b"], "u2": ["b", "c", "d"], "u3": ["a", "d", "a"],
             "u4": ["c", "d", "e"], "u5": ["a", "b", "e"]}


def matrix(sequences, vocabulary):
    x = np.zeros((len(sequences), len(vocabulary)))
    for r, items in enumerate(sequences.values()):
        for i in items:
            x[r, vocabulary.index(i)] = 1.0
    return x


@pytest.mark.parametrize("pairs_per_step", [1, 1 << 24])
def test_the_closed_form_is_each_items_ridge_regression_on_the_other_items(pairs_per_step):
    """Column j of B minimises ||x_j - X_-j b||^2 + l2 ||b||^2 (diag(B) = 0), whatever the step
    the pair counts are summed in."""
    model = Ease.fit(SEQUENCES, EaseConfig(l2=0.5), pairs_per_step=pairs_per_step)
    assert model.vocabulary == ["a", "b", "c", "d", "e"]  # by users who have each, then by id
    x, weights = matrix(SEQUENCES, model.vocabulary), model.weights.double().numpy()
    for j in range(len(model.vocabulary)):
        others = [i for i in range(len(model.vocabulary)) if i != j]
        x_other = x[:, others]
        expected = np.linalg.solve(x_other.T @ x_other + 0.5 * np.eye(len(others)), x_other.T @ x[:, j])
        assert weights[others, j] == pytest.approx(expected, abs=1e-5)
        assert weights[j, j] == 0.0


def test_top_k_sums_the_seen_items_rows_and_leaves_the_history_and_unknown_items_out():
    model = Ease.fit(SEQUENCES, EaseConfig(l2=0.5))
    weights, index = model.weights.double().numpy(), model.index
    ranked = model.top_k([["a", "b", "a", "zzz"], ["zzz"], ["c"]], 10, [set(), set(), {"a"}])
    scores = weights[index["a"]] + weights[index["b"]]
    expected = sorted((i for i in model.vocabulary if i not in {"a", "b"}), key=lambda i: -scores[index[i]])
    assert [i for i, _ in ranked[0]] == expected
    assert [s for _, s in ranked[0]] == pytest.approx([scores[index[i]] for i in expected], abs=1e-5)
    assert ranked[1] == []  # no item the model knows
    assert {i for i, _ in ranked[2]} == {"b", "d", "e"}  # its history and the excluded item left out
    assert len(model.top_k([["a"]], 2, [set()])[0]) == 2


def test_max_items_keeps_the_most_interacted_items():
    model = Ease.fit(SEQUENCES, EaseConfig(l2=0.5, max_items=2))
    assert model.vocabulary == ["a", "b"] and model.weights.shape == (2, 2)
    assert model.top_k([["e"]], 5, [set()]) == [[]]


def test_the_retrieval_directory_holds_ease_beside_sasrec_under_one_version(tmp_path):
    """``train_into`` (train-retrieval, eval-stream, the demo) fits EASE with SASRec; the worker's
    load brings both; a directory without EASE, or with max_items 0, loads with none."""
    events = [{"user_id": u, "item_id": i, "event_time": f"2021-03-01T00:00:{n:02d}Z"}
              for u, items in SEQUENCES.items() for n, i in enumerate(items)]
    sasrec = SequentialSourceConfig(hidden=8, blocks=1, max_len=4, epochs=1)
    train_into(tmp_path / "both", events, sasrec, echo=lambda _: None, ease=EaseConfig(l2=0.5))
    loaded = SequentialRetriever.from_pretrained(tmp_path / "both")
    fitted = Ease.fit(SEQUENCES, EaseConfig(l2=0.5))
    assert loaded.ease is not None and loaded.ease.vocabulary == fitted.vocabulary
    assert np.allclose(loaded.ease.weights.numpy(), fitted.weights.numpy())
    metadata = json.loads((tmp_path / "both" / "mmsr-retrieval.json").read_text())
    assert metadata["ease"]["config"] == {"l2": 0.5, "max_items": 10000} and metadata["ease"]["items"] == 5

    train_into(tmp_path / "sasrec-only", events, sasrec, echo=lambda _: None, ease=EaseConfig(max_items=0))
    assert SequentialRetriever.from_pretrained(tmp_path / "sasrec-only").ease is None
    assert not (tmp_path / "sasrec-only" / "ease.safetensors").exists()
