"""The generation and GPU benchmark scripts run end to end at tiny shapes, so they work when a GPU is lent."""
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
    assert result["complete"] is True
    for model in result["models"].values():
        assert [(r["decoding"], r["batch"]) for r in model["rows"]] == [("dynamic", 1), ("dynamic", 2),
                                                                        ("static", 1), ("static", 2)]
        assert all(r["captions_per_s"] > 0 and r["summaries_per_s"] > 0 for r in model["rows"])
        by_batch = {r["batch"]: r for r in model["rows"] if r["decoding"] == "dynamic"}
        assert [(v["decoding"], v["batch"]) for v in model["vs_dynamic"]] == [("static", 1), ("static", 2)]
        for v, static in zip(model["vs_dynamic"], model["rows"][2:]):
            assert v["summary_tokens_per_s"] == round(static["summary_tokens_per_s"] /
                                                      by_batch[v["batch"]]["summary_tokens_per_s"], 2)


def test_gpu_generation_times_only_the_tasks_asked_for(tmp_path):
    out = tmp_path / "g.json"
    subprocess.run([sys.executable, "-m", "bench.gpu_generation", "--tiny", "--models", "qwen2-vl-2b", "--batches", "1",
                    "--new-tokens", "3", "--tasks", "summary", "--out", str(out)],
                   check=True, capture_output=True, timeout=600)
    model = json.loads(out.read_text())["models"]["qwen2-vl-2b"]
    assert [set(r) for r in model["rows"]] == [{"decoding", "batch", "summaries_per_s", "summary_tokens_per_s",
                                                 "first_call_s"}] * 2
    assert [set(v) for v in model["vs_dynamic"]] == [{"decoding", "batch", "summary_tokens_per_s"}]


def test_gpu_generation_keeps_the_rows_of_a_run_stopped_midway(tmp_path):
    """On a lent GPU the run has a hard time limit: what it measured before it is kept."""
    out = tmp_path / "g.json"
    proc = subprocess.Popen([sys.executable, "-m", "bench.gpu_generation", "--tiny", "--models", "llava-1.5-7b",
                             "--batches", "1,2,3,4,5,6,7,8", "--decodings", "dynamic", "--new-tokens", "3",
                             "--out", str(out)], stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:  # one line per measured row
        if line.startswith("llava-1.5-7b {") and "'batch': 2" in line:
            break
    proc.kill()
    proc.wait()
    result = json.loads(out.read_text())
    assert result["complete"] is False
    assert [r["batch"] for r in result["models"]["llava-1.5-7b"]["rows"]][:2] == [1, 2]


def test_cpu_generation_script_times_every_decoding_against_the_dynamic_cache(tmp_path):
    out = tmp_path / "c.json"
    subprocess.run([sys.executable, "-m", "bench.cpu_generation", "--model", "tiny-random-llava", "--batches", "1,2",
                    "--new-tokens", "3", "--prompt-tokens", "16", "--repeats", "1",
                    "--decodings", "dynamic,static-eager,static-compiled", "--out", str(out)],
                   check=True, capture_output=True, timeout=600)
    rows = json.loads(out.read_text())["rows"]
    assert [(r["decoding"], r["batch"]) for r in rows] == [(d, b) for b in (1, 2)
                                                           for d in ("dynamic", "static-eager", "static-compiled")]
    assert all(r["summary_tokens_per_s"] > 0 and r["tokens_per_s_vs_dynamic"] > 0 for r in rows)
    assert [r["tokens_per_s_vs_dynamic"] for r in rows if r["decoding"] == "dynamic"] == [1.0, 1.0]


def test_gpu_scoring_script_runs_at_tiny_shapes(tmp_path):
    out = tmp_path / "s.json"
    subprocess.run([sys.executable, "-m", "bench.gpu_scoring", "--tiny", "--users", "2", "--candidates", "4",
                    "--naive-users", "1", "--collab", "--out", str(out)], check=True, capture_output=True, timeout=600)
    result = json.loads(out.read_text())
    assert result["tiny"] is True and result["candidates_per_user"] == 4
    assert result["shared_prefix_candidates_per_s"] > 0 and result["naive_candidates_per_s"] > 0
    assert result["max_abs_score_difference_bf16"] < 1e-4  # fp32 on the CPU: same scores both ways
    collab = result["collab_tokens"]  # the same with collaborative tokens
    assert collab["shared_prefix_candidates_per_s"] > 0 and collab["max_abs_score_difference_bf16"] < 1e-4


def test_warm_up_script_times_each_start_in_a_process_of_its_own(tmp_path):
    out = tmp_path / "w.json"
    subprocess.run([sys.executable, "-m", "bench.warm_up", "--model", "tiny-random-llava", "--batch", "4",
                    "--new-tokens", "3", "--requests", "1,4,2", "--out", str(out)],
                   check=True, capture_output=True, timeout=600)
    result = json.loads(out.read_text())
    rows = {r["scenario"]: r for r in result["rows"]}
    names = ("eager", "compiled", "compiled+warm-up", "compiled+warm-up+cache-512")
    assert set(rows) == set(names) and [rows[name]["warm_up_calls"] for name in names] == [0, 0, 3, 3]
    assert all(len(r["request_latency_s"]) == 3 and r["all_answered_s"] >= r["first_answered_s"] >= r["ready_s"]
               for r in rows.values())
    assert result["first_request_latency_cold_over_warm"] > 0


def test_ease_bench_runs_at_tiny_sizes(tmp_path):
    out = tmp_path / "ease.json"
    subprocess.run([sys.executable, "-m", "bench.ease", "--items", "50,80", "--users", "200", "--per-user", "10",
                    "--batch", "8", "--out", str(out)], check=True, capture_output=True, timeout=600)
    rows = json.loads(out.read_text())["rows"]
    assert [(r["items"], r["weights_mb"]) for r in rows] == [(50, round(50 * 50 * 4 / 2 ** 20, 1)),
                                                             (80, round(80 * 80 * 4 / 2 ** 20, 1))]
    assert all(r["pairs"] == 200 * 10 ** 2 for r in rows)  # timings are figures, not asserted
    assert all(set(r["serve_ms_per_user"]) == {"ease", "sasrec"} and "serve_ratio_ease_over_sasrec" in r for r in rows)
