"""`mmsr train/eval` flags land on the preset: given values override, absent ones keep the preset's."""
from __future__ import annotations

from click.testing import CliRunner

from models.evaluation.paper import PRESETS
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


def test_the_results_say_what_the_offset_guard_had_to_read_from_the_broker():
    """An event the stream did not deliver in time is caught up by the guard; a run's results say
    how often, so that a regression in delivery shows in the figures, not only in a log."""
    from streams.harness.eval_stream import WORKER_COUNTERS, guard_line, markdown

    assert {"stalled_catch_ups_total", "offsets_recovered_total", "catch_up_errors_total"} <= set(WORKER_COUNTERS)
    counters = {"stalled_catch_ups_total": 1.0, "offsets_recovered_total": 1.0, "catch_up_errors_total": 0.0}
    assert guard_line(counters) == ["Offset guard: 1 stalled-partition catch-ups, 1 records read from the broker, "
                                    "0 catch-up errors."]
    scores = {"HR@10": 0.2, "NDCG@10": 0.1, "MRR@10": 0.05, "coverage": 0.7}
    result = {"stream": scores, "candidate_stage": scores, "popularity": scores, "events_scored": 10,
              "events_without_list": 0, "list_timeouts": 0, "hr_ratio_stream_over_popularity": 1.0,
              "strategies": {}, "sources_in_scored_lists": {}, "seconds": {}}
    assert "Offset guard" not in markdown(result, 10)  # an older run's results, without the counters
    assert "Offset guard: 1 stalled-partition catch-ups" in markdown({**result, "worker_counters": counters}, 10)
