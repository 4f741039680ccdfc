"""The leave-one-out protocol: the split, the metrics by hand, and no test item in any training input."""
from __future__ import annotations

import numpy as np
import pytest

from models.config import SASRecConfig
from models.evaluation import leave_one_out as loo


def event(user, item, t):
    return {"user_id": user, "item_id": item, "event_time": f"2021-03-01T00:{t:02d}:00Z"}


def test_the_last_event_is_the_test_item_and_the_one_before_it_validation_ties_in_log_order():
    events = [event("a", "x", 0), event("b", "x", 0), event("a", "y", 1), event("a", "z", 2), event("b", "y", 2),
              event("a", "w", 2),  # same time as z: the log's order makes w the last
              event("b", "z", 3), event("c", "x", 3), event("c", "y", 4)]  # c: two events, training only
    split = loo.split(events)
    assert split.test == {"a": "w", "b": "z"} and split.validation == {"a": "z", "b": "y"}
    assert [(e["user_id"], e["item_id"]) for e in split.train] == [("a", "x"), ("b", "x"), ("a", "y"), ("c", "x"),
                                                                    ("c", "y")]
    users, histories, targets = split.queries("validation")
    assert (users, histories, targets) == (["a", "b"], [["x", "y"], ["x"]], ["z", "y"])
    assert split.queries("test") == (["a", "b"], [["x", "y", "z"], ["x", "y"]], ["w", "z"])


def test_hit_rate_and_ndcg_from_the_rank_by_hand():
    values = loo.per_user([1, 3, 0, 15], ks=(10, 20))
    assert values["HR@10"].tolist() == [1, 1, 0, 0] and values["HR@20"].tolist() == [1, 1, 0, 1]
    assert values["NDCG@10"].tolist() == pytest.approx([1.0, 0.5, 0.0, 0.0])
    assert values["NDCG@20"][3] == pytest.approx(1 / np.log2(16))
    assert loo.rank_of(["a", "b", "c"], "c") == 3 and loo.rank_of(["a"], "z") == 0


def shifted_log(users=12, items=15, length=8):
    """Each user walks the catalog from their own start; the last two steps end on items named for the
    user, so any training input that holds them is a leak."""
    events = []
    for u in range(users):
        for t in range(length):
            events.append(event(f"u{u}", f"i{(u + t) % items}", t))
        events.append(event(f"u{u}", f"valid-{u}", length))
        events.append(event(f"u{u}", f"test-{u}", length + 1))
    return sorted(events, key=lambda e: e["event_time"])


def test_no_fitted_source_ever_sees_a_validation_or_test_item_and_the_test_is_read_once(monkeypatch):
    from models.candidates import ease as ease_module
    from models.candidates import sequential
    from models.evaluation import prequential

    seen: list[str] = []
    real_apply, real_ease, real_train = (prequential.SourceState.apply, ease_module.Ease.fit.__func__,
                                         sequential.SequentialRetriever.train.__func__)

    def apply(self, e):
        seen.append(e["item_id"])
        return real_apply(self, e)

    def ease_fit(cls, sequences, config, *args, **kwargs):
        seen.extend(i for seq in sequences.values() for i in seq)
        return real_ease(cls, sequences, config, *args, **kwargs)

    def train(cls, sequences, config, *args, **kwargs):
        seen.extend(i for seq in sequences.values() for i in seq)
        return real_train(cls, sequences, config, *args, **kwargs)

    monkeypatch.setattr(prequential.SourceState, "apply", apply)
    monkeypatch.setattr(ease_module.Ease, "fit", classmethod(ease_fit))
    monkeypatch.setattr(sequential.SequentialRetriever, "train", classmethod(train))
    from models.candidates.cooccurrence import CooccurrenceConfig

    sasrec = SASRecConfig(hidden=16, blocks=1, max_len=8, epochs=4, batch_size=8, loss="sampled", negatives=4,
                          whole_sequences=True, dropout=0.0)
    config = loo.LeaveOneOutConfig(sasrec=(sasrec,), check_every=2, patience=5, ease_l2=(10.0, 100.0), rrf_k=(60.0,),
                                   weight_grid=(0.0, 1.0), depth=20, bootstrap=50)
    phases: list[str] = []
    real_queries = loo.Split.queries
    monkeypatch.setattr(loo.Split, "queries", lambda self, phase: phases.append(phase) or real_queries(self, phase))
    run = loo.Run(shifted_log(), config, CooccurrenceConfig(), log=lambda *_: None)
    run.fit_counts()
    run.fit_ease()
    run.fit_sasrec()
    run.fit_blend()
    assert seen and not [i for i in seen if i.startswith(("valid-", "test-"))]
    assert phases == ["validation"]  # every choice above was made without the test items
    assert [c["epoch"] for c in run.sasrec_trials[0]["checks"]] == [2, 4]
    assert run.chosen["ease"]["l2"] in (10.0, 100.0) and run.chosen["blend"]["rrf_k"] == 60.0
    for name in ("cooccurrence", "sequential-0", "ease", "popularity", "blend"):
        result = run.test(name)
        low, high = result["HR@10_interval"]
        assert 0.0 <= low <= result["HR@10"] <= high <= 1.0
        # the test items were never trained on: no source can rank them
        assert result["HR@20"] == 0.0, name
    with pytest.raises(RuntimeError, match="already read"):
        run.test("blend")
    assert phases == ["validation", "test"]
    report = run.report()
    assert report["users"] == 12 and "per_user" not in report["test"]["blend"]


def test_early_stopping_keeps_the_best_epochs_weights(monkeypatch):
    """Validation NDCG@10 rises then falls: training stops after ``patience`` worse checks and the
    model is the one of the best check."""
    from models.candidates.cooccurrence import CooccurrenceConfig

    scores = iter([0.1, 0.3, 0.2, 0.1, 0.05, 0.0, 0.0])
    sasrec = SASRecConfig(hidden=8, blocks=1, max_len=4, epochs=20, batch_size=8, dropout=0.0)
    run = loo.Run(shifted_log(users=4), loo.LeaveOneOutConfig(sasrec=(sasrec,), check_every=1, patience=2),
                  CooccurrenceConfig(), log=lambda *_: None)
    weights_at = {}
    real_validate = run.validate

    def validate(name, lister, depth=None):
        result, lists = real_validate(name, lister, depth)
        if depth is not None:  # the checks during training (the final scoring uses the full depth)
            result = {**result, "NDCG@10": next(scores)}
        return result, lists

    monkeypatch.setattr(run, "validate", validate)
    from models.candidates import sasrec as sasrec_module

    real_loss = sasrec_module.SASRecScorer._train

    def spy(self, *args):
        self_on_epoch = self.on_epoch

        def on_epoch(epoch, scorer):
            weights_at[epoch + 1] = scorer.model.items.weight.detach().clone()
            return self_on_epoch(epoch, scorer)

        self.on_epoch = on_epoch
        return real_loss(self, *args)

    monkeypatch.setattr(sasrec_module.SASRecScorer, "_train", spy)
    run.fit_sasrec()
    trial = run.sasrec_trials[0]
    assert [c["epoch"] for c in trial["checks"]] == [1, 2, 3, 4]  # best at 2, then two worse: stop
    assert trial["best_epoch"] == 2
    import torch

    kept = run.models["sequential-0"].model.items.weight
    assert torch.equal(kept, weights_at[2]) and not torch.equal(kept, weights_at[4])


def test_the_markdown_puts_mmsr_beside_the_published_rows_with_the_gap():
    row = {m: 0.3 for m in ("HR@10", "NDCG@10", "HR@20", "NDCG@20")}
    row.update({f"{m}_interval": (0.29, 0.31) for m in ("HR@10", "NDCG@10", "HR@20", "NDCG@20")})
    report = {"dataset": "ml-1m", "users": 6040, "test": {"sequential": row, "blend": row},
              "chosen_on_validation": {"blend": {"weights": {"cooccurrence": 1.0}, "rrf_k": 60.0}}, "seconds": {}}
    text = loo.markdown(report)
    assert "| HSTU-large (hstu) | 0.3294 | 0.1893 |" in text
    assert "sequential against SASRec+ (full-softmax cross-entropy): HR@10 -0.0152, NDCG@10 +0.1179" in text
