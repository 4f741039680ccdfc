"""The GPU benchmark script runs end to end at tiny shapes, so it works when a GPU is lent."""
import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_gpu_generation_script_runs_at_tiny_shapes(tmp_path):
    out = tmp_path / "g.json"
    subprocess.run([sys.executable, "-m", "bench.gpu_generation", "--tiny", "--batches", "1,2", "--new-tokens", "3",
                    "--out", str(out)], check=True, capture_output=True, timeout=600)
    result = json.loads(out.read_text())
    assert set(result["models"]) == {"llava-1.5-7b", "qwen2-vl-2b"} and result["tiny"] is True
    for model in result["models"].values():
        assert [r["batch"] for r in model["rows"]] == [1, 2]
        assert all(r["captions_per_s"] > 0 and r["summaries_per_s"] > 0 for r in model["rows"])
