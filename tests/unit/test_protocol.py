"""The evaluation protocol's split: nothing of the test item leaks into summaries or training."""
from __future__ import annotations

from models.evaluation.paper import Dataset, EvalConfig, build_cases


def dataset() -> Dataset:
    items = {str(i): {"title": f"Item {i}", "categories": ["Drama"]} for i in range(200)}
    sequences = {str(u): [str((u * 13 + k * 7) % 200) for k in range(12 + u % 5)] for u in range(30)}
    sequences["short"] = ["1", "2", "3"]
    return Dataset(items, sequences)


def test_leave_last_out_with_summarized_window_and_pairs():
    data = dataset()
    config = EvalConfig(users=10, window=9, block=3, seeds=(0, 1, 2), negatives=20)
    cases = build_cases(data, config)
    assert len(cases) == 10 and "short" not in {c.user_id for c in cases}
    for case in cases:
        seq = data.sequences[case.user_id]
        assert case.test_item == seq[-1] and case.history == seq[:-1]
        assert case.window == case.history[-9:] and case.test_item not in case.window
        assert len(case.train_pairs) == 2  # S_1 -> first item of block 2, S_2 -> first item of block 3
        for t, positive, negative in case.train_pairs:
            assert positive == case.window[(t + 1) * 3] and negative not in seq
        assert set(case.test_negatives) == {0, 1, 2}
        for negatives in case.test_negatives.values():
            assert len(negatives) == 20 == len(set(negatives)) and not set(negatives) & set(seq)
        assert case.test_negatives[0] != case.test_negatives[1]
        candidates = case.candidates()
        assert candidates[0] == case.test_item and len(candidates) == len(set(candidates))
        # validation: the last history item with S_{T-1}, which has not read it; never a training positive
        t, item, negatives = case.validation
        assert (t, item) == (1, case.window[-1]) and item not in {p for _, p, _ in case.train_pairs}
        assert len(negatives) == config.validation_negatives == len(set(negatives)) and not set(negatives) & set(seq)


def test_half_the_negatives_come_from_the_candidate_stage():
    from models.evaluation.paper import candidate_stage

    import random

    rng = random.Random(0)
    items = {str(i): {"title": f"Item {i}", "categories": ["Drama"]} for i in range(300)}
    data = Dataset(items, {str(u): rng.sample(range(120), 15) for u in range(200)})
    data.sequences = {u: [str(i) for i in seq] for u, seq in data.sequences.items()}
    config = EvalConfig(users=30, window=9, block=3, seeds=(0,), validation_negatives=10)
    stage = candidate_stage(data)
    hard = total = 0
    for case in build_cases(data, config):
        pool = set(stage.cooccurrence(case.user_id, config.hard_pool + 20))
        negatives = case.validation[2] + [n for _, _, n in case.train_pairs]
        hard += sum(n in pool for n in negatives)
        total += len(negatives)
    assert 0.4 < hard / total < 0.75, hard / total  # half drawn from the pool (a uniform draw lands there rarely)
    uniform = build_cases(data, EvalConfig(users=30, window=9, block=3, seeds=(0,), validation_negatives=10,
                                           hard_negatives=0.0))
    in_pool = sum(n in set(stage.cooccurrence(c.user_id, config.hard_pool + 20)) for c in uniform
                  for n in c.validation[2])
    assert in_pool / sum(len(c.validation[2]) for c in uniform) < 0.35


def test_next_items_adds_pairs_from_the_next_block_without_moving_the_first_ones():
    data = dataset()
    one = build_cases(data, EvalConfig(users=10, window=9, block=3, seeds=(0,)))
    three = build_cases(data, EvalConfig(users=10, window=9, block=3, seeds=(0,), next_items=3))
    for a, b in zip(one, three):
        assert a.test_negatives == b.test_negatives
        # block 3's last item is the validation positive: held out of training
        expected = [(t, b.window[(t + 1) * 3 + k]) for t in (0, 1) for k in range(3) if (t, k) != (1, 2)]
        assert [(t, p) for t, p, _ in b.train_pairs] == expected and b.validation[1] == b.window[-1]
        assert not {n for _, _, n in b.train_pairs} & set(data.sequences[b.user_id])
        assert [p for _, p, _ in a.train_pairs] == [b.window[3], b.window[6]]


def test_cases_are_reproducible_and_negatives_do_not_depend_on_the_user_sample():
    data = dataset()
    a = build_cases(data, EvalConfig(users=10, window=9, seeds=(0,)))
    b = build_cases(data, EvalConfig(users=10, window=9, seeds=(0,)))
    assert [(c.user_id, c.test_negatives, c.train_pairs) for c in a] == [(c.user_id, c.test_negatives, c.train_pairs)
                                                                          for c in b]
    everyone = {c.user_id: c for c in build_cases(data, EvalConfig(users=0, window=9, seeds=(0,)))}
    assert len(everyone) == 30
    for case in a:
        assert everyone[case.user_id].test_negatives == case.test_negatives


def test_window_is_cut_to_whole_blocks():
    data = Dataset({str(i): {"title": str(i), "categories": []} for i in range(100)},
                   {"u": [str(i) for i in range(8)]})
    (case,) = build_cases(data, EvalConfig(users=1, window=9, block=3, seeds=(0,)))
    assert case.history == [str(i) for i in range(7)]
    assert case.window == [str(i) for i in range(1, 7)]  # 7 history items: the oldest one is dropped


def test_dataset_from_event_logs_orders_by_time_and_drops_unknown_items(tmp_path):
    import json

    items = [{"item_id": i, "title": f"T{i}", "categories": ["x"], "event_time": "2026-01-01T00:00:00Z"}
             for i in ("a", "b", "c")]
    events = [("u1", "b", "2026-01-03T00:00:00Z"), ("u1", "a", "2026-01-02T00:00:00+00:00"),
              ("u1", "zzz", "2026-01-04T00:00:00Z"), ("u2", "c", "2026-01-01T00:00:00Z"),
              ("u1", "a", "2026-01-05T00:00:00Z")]
    (tmp_path / "items.jsonl").write_text("\n".join(json.dumps(i) for i in items) + "\n")
    (tmp_path / "inter.jsonl").write_text("\n".join(
        json.dumps({"user_id": u, "item_id": i, "type": "click", "event_time": t}) for u, i, t in events))
    data = Dataset.from_events(tmp_path / "items.jsonl", tmp_path / "inter.jsonl")
    assert data.sequences == {"u1": ["a", "b"], "u2": ["c"]}  # time order, unknown item dropped, repeat kept once
    assert data.items["a"]["title"] == "Ta"
