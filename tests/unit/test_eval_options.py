"""`mmsr train/eval` flags land on the preset: given values override, absent ones keep the preset's."""
from __future__ import annotations

from click.testing import CliRunner

from models.evaluation import PRESETS
from streams.cli import eval_config, main


def test_given_values_override_the_preset_and_absent_ones_keep_it():
    config = eval_config("smoke", {"users": 3, "seeds": "0,1,2", "model": None, "lr": None})
    assert config.users == 3 and config.seeds == (0, 1, 2)
    assert config.model == PRESETS["smoke"].model and config.lr == PRESETS["smoke"].lr


def test_unknown_variant_is_a_one_line_usage_error():
    result = CliRunner().invoke(main, ["eval", "--preset", "smoke", "--variants", "mllm-msr,bogus"])
    assert result.exit_code == 2 and "unknown variants ['bogus']" in result.output


def test_items_without_interactions_is_refused(tmp_path):
    items = tmp_path / "items.jsonl"
    items.write_text("")
    result = CliRunner().invoke(main, ["train", "--items", str(items)])
    assert result.exit_code != 0 and "--items and --interactions go together" in result.output


def test_the_streams_sequential_source_is_trained_to_rank_the_whole_catalog(tmp_path):
    """train-retrieval and eval-stream train the full-softmax SASRec on every window; mmsr eval keeps the paper's."""
    import json

    from models.config import SASRecConfig
    from streams.harness.eval_stream import StreamEvalConfig, train_sequential

    events = [{"user_id": f"u{u}", "item_id": f"i{(u + t) % 7}", "event_time": "2021-03-01T00:00:00Z"}
              for u in range(4) for t in range(6)]
    train_sequential(events, tmp_path / "seq", StreamEvalConfig(sasrec_epochs=1), log=lambda *_: None)
    saved = json.loads((tmp_path / "seq" / "config.json").read_text())
    assert (saved["loss"], saved["whole_sequences"], saved["epochs"]) == ("ce", True, 1)
    assert (SASRecConfig().loss, SASRecConfig().whole_sequences) == ("bce", False)
    result = CliRunner().invoke(main, ["train-retrieval", "--help"])
    assert "[default: ce]" in result.output and "[default: whole-sequences]" in result.output


def test_results_name_paths_inside_the_run_relative_to_it(tmp_path):
    from streams.harness.eval_stream import relative_to_run

    run = tmp_path / "run"
    assert relative_to_run(str(run / "sequential"), run) == "sequential"
    assert relative_to_run(str(tmp_path / "adapter"), run) == str(tmp_path / "adapter")
    assert relative_to_run(f"{run}-other/sequential", run) == f"{run}-other/sequential"
    assert relative_to_run(0.6, run) == 0.6
