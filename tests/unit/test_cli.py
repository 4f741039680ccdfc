"""The CLI starts fast: importing it loads neither torch, Faust nor the evaluation."""
import subprocess
import sys

from click.testing import CliRunner

from streams.cli import main
from streams.settings import Settings


def test_importing_the_cli_loads_no_model_or_stream_code():
    code = ("import sys, streams.cli; heavy = [m for m in ('torch', 'faust', 'models.evaluation', 'transformers') "
            "if m in sys.modules]; print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_every_setting_is_a_worker_flag_with_its_default():
    help_text = CliRunner().invoke(main, ["worker", "--help"], terminal_width=200).output
    for name, field in Settings.model_fields.items():
        if name == "sasl_password":  # environment only: a flag would put it in the process list
            assert "--sasl-password" not in help_text
            continue
        assert f"--{name.replace('_', '-')}" in help_text, name
