"""`mmsr eval --preset smoke` and `mmsr train --preset smoke` end to end (tiny LLaVA as the LLM)."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from models.evaluation.paper import ORDER
from models.llm.serving import ADAPTER_METADATA
from streams.cli import main

pytestmark = pytest.mark.slow


def test_smoke_evaluation_writes_table_chart_and_json(tmp_path):
    result = CliRunner().invoke(main, ["eval", "--preset", "smoke", "--out", str(tmp_path), "--users", "4"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "results.json").read_text())
    assert set(report["metrics"]) == set(ORDER)
    assert len(report["users"]) == 4 and report["config"]["seeds"] == [0, 1]
    for name, metrics in report["metrics"].items():
        for metric in ("auc", "user_auc", "hr@3", "hr@5", "hr@10", "ndcg@5", "mrr@10"):
            value, (low, high) = metrics[metric]["value"], metrics[metric]["ci95"]
            assert 0.0 <= low <= value + 1e-9 and value <= high + 1e-9 <= 1.0 + 1e-9, (name, metric)
        assert metrics["hr@3"]["value"] <= metrics["hr@5"]["value"] <= metrics["hr@10"]["value"]
    # each LoRA variant was trained, saved with its metadata, and its loss recorded
    for variant in ("mllm-msr", "tallrec-style", "direct-summary", "no-captions"):
        saved = json.loads((tmp_path / "adapters" / variant / "adapter" / ADAPTER_METADATA).read_text())
        assert saved["data"]["variant"] == variant and saved["base_model"] == "tiny-random-llava"
        assert report["training"][variant]["steps"] > 0
    # the collaborative variants: the projector stage on the text variant's frozen LoRA, saved inside one adapter
    from models.llm.collab import Projector
    from models.llm.fusion import FEATURES, FusedScorer

    for variant, base in (("collab", "mllm-msr"), ("tallrec-collab", "tallrec-style")):
        adapter = tmp_path / "adapters" / variant / "adapter"
        saved = json.loads((adapter / ADAPTER_METADATA).read_text())
        assert saved["train"]["stage"] == "projector" and saved["collab"]["started_from"].endswith(f"{base}/adapter")
        assert Projector.from_pretrained(adapter).config.sequential_version == saved["collab"]["sequential_version"]
    # the fused score: fitted on the validation pairs, saved beside its LLM's adapter, weights reported
    fused = FusedScorer.from_pretrained(tmp_path / "adapters" / "collab" / "adapter")
    assert fused.features == FEATURES and fused.fitted_on["validation_users"] == 4
    assert fused.fitted_on["rows"] == 4 * 21 and fused.fitted_on["positives"] == 4
    assert set(report["fusion"]["collab"]["weights"]) == set(FEATURES)
    table = (tmp_path / "results.md").read_text()
    assert all(f"| {name} |" in table for name in ORDER)
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # generated texts are cached: a rerun writes no caption or summary again
    again = CliRunner().invoke(main, ["eval", "--preset", "smoke", "--out", str(tmp_path), "--users", "4",
                                      "--variants", "mllm-msr", "--no-zero-shot"])
    assert again.exit_code == 0, again.output
    assert "0 to write" in again.output and "summaries (recurrent" not in again.output


def test_train_command_saves_an_adapter_with_metadata(tmp_path):
    result = CliRunner().invoke(main, ["train", "--preset", "smoke", "--out", str(tmp_path / "run"), "--users", "3"])
    assert result.exit_code == 0, result.output
    metadata = json.loads((tmp_path / "run" / "adapter" / ADAPTER_METADATA).read_text())
    assert metadata["data"]["users"] == 3 and metadata["lora"] == {"r": 16, "alpha": 32, "dropout": 0.1,
                                                                    "target_modules": "language-linear"}
    assert metadata["metrics"]["steps"] > 0 and metadata["git_revision"]


def test_train_command_with_collaborative_tokens_and_the_fused_score(tmp_path):
    """The stages a stream adapter is made with: LoRA, then the projector against the served sequential
    model, then the fused score, all in the one adapter directory the worker watches."""
    from models.llm.collab import Projector
    from models.llm.fusion import FEATURES, FusedScorer

    retrieval = CliRunner().invoke(main, ["train-retrieval", "--out", str(tmp_path / "sasrec"), "--epochs", "2"])
    assert retrieval.exit_code == 0, retrieval.output
    result = CliRunner().invoke(main, ["train", "--preset", "smoke", "--out", str(tmp_path / "run"), "--users", "3",
                                       "--sequential-model", str(tmp_path / "sasrec"), "--fused",
                                       "--validation-negatives", "5"])
    assert result.exit_code == 0, result.output
    adapter = tmp_path / "run" / "adapter"
    metadata = json.loads((adapter / ADAPTER_METADATA).read_text())
    sasrec = json.loads((tmp_path / "sasrec" / "mmsr-retrieval.json").read_text())
    assert metadata["train"]["stage"] == "projector" and metadata["collab"]["sequential_version"] == sasrec["version"]
    assert metadata["collab"]["started_from"] == str(tmp_path / "run" / "stages" / "lora" / "adapter")
    assert Projector.from_pretrained(adapter).config.sequential_version == sasrec["version"]
    fused = FusedScorer.from_pretrained(adapter)
    assert fused.features == FEATURES and fused.fitted_on["rows"] == 3 * 6
    assert fused.fitted_on["adapter_version"] == metadata["version"]
    refused = CliRunner().invoke(main, ["train", "--preset", "smoke", "--out", str(tmp_path / "x"), "--fused"])
    assert refused.exit_code != 0 and "sequential model" in refused.output


def test_fitted_weights_come_from_every_source_replayed_on_the_validation_window(tmp_path):
    """eval-stream --fit-weights (and bench/blend_grid.py): the offline lists of all five sources on
    the last share of the backfill, SASRec and EASE trained on the events before that window only."""
    from models.candidates.cooccurrence import CooccurrenceConfig
    from models.candidates.sequential import read_version
    from streams.harness.eval_stream import StreamEvalConfig, fit_blend_weights, offline_lists

    items = [{"item_id": f"i{n}", "title": f"Film number {n}", "categories": ["Drama" if n % 2 else "Comedy"]}
             for n in range(12)]
    events = [{"user_id": f"u{u}", "item_id": f"i{(5 * u + 7 * t) % 12}",
               "event_time": f"2021-03-01T{t:02d}:{u:02d}:00Z"} for t in range(8) for u in range(10)]
    config = StreamEvalConfig(sasrec_epochs=1, validation_fraction=0.25)
    fitted = fit_blend_weights(items, events, config, tmp_path, CooccurrenceConfig(), log=lambda *_: None)
    assert fitted["validation_events"] == 20
    assert set(fitted["weights"]) == {"cooccurrence", "sequential", "ease", "content", "trending"}
    assert 0.0 <= fitted["validation"]["HR@10"] <= 1.0
    model_dir = tmp_path / "sequential-validation"
    assert read_version(model_dir)
    assert json.loads((model_dir / "mmsr-retrieval.json").read_text())["data"] == {
        "events": 60, "until": events[59]["event_time"]}
    lists, targets = offline_lists(items, events, 60, 80, CooccurrenceConfig(), model_dir)
    assert [target for _, target in targets] == [e["item_id"] for e in events[60:]]
    for source in ("cooccurrence", "sequential", "ease", "content", "trending"):
        assert len(lists[source]) == 20 and any(lists[source]), source
        assert all(not set(ranked) & {e["item_id"] for e in events[:60 + n] if e["user_id"] == targets[n][0]}
                   for n, ranked in enumerate(lists[source])), f"{source} proposed an item of the user's history"
    without = offline_lists(items, events, 60, 80, CooccurrenceConfig(), None)[0]
    assert not any(without["sequential"]) and not any(without["ease"])


def test_full_catalog_holds_out_each_users_last_event_and_scores_every_source_and_the_blend():
    """`mmsr eval --protocol full-catalog`: every source ranks the whole catalog for each user's last
    event, from the other events only; a source that proposes every unseen item scores HR@10 1 here."""
    from models.evaluation.prequential import full_catalog

    items = {f"i{n}": {"item_id": f"i{n}", "title": f"Film {n}"} for n in range(10)}
    events = [{"user_id": f"u{u}", "item_id": f"i{(u + t) % 10}", "event_time": f"2021-03-01T{t:02d}:{u:02d}:00Z"}
              for t in range(6) for u in range(8)]
    result = full_catalog(events, items, sasrec_epochs=1, weights={"cooccurrence": 1.0, "ease": 1.0}, k=10,
                          recall_at=5, log=lambda *_: None)
    assert (result["users"], result["train_events"]) == (8, 40)
    assert set(result["sources"]) == {"cooccurrence", "sequential", "ease", "content", "trending", "popularity", "blend"}
    assert set(result["seconds"]) == {"counts", "sasrec", "ease"}
    # each user has seen 5 of the 10 items before the held-out one, and every item follows every other
    # somewhere in the log: a source that proposes all 5 unseen items has HR@10 1
    for name in ("cooccurrence", "ease", "blend"):
        assert result["sources"][name]["HR@10"] == 1.0, name
    assert result["sources"]["content"]["HR@10"] == 0.0  # no embedder given: no content lists
