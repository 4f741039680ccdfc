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
