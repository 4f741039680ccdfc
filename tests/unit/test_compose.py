"""docker-compose.yml cannot run here (no Docker engine); check what can be checked without it."""
from pathlib import Path

import yaml

from streams.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
READ_OUTSIDE_SETTINGS = {"MMSR_MODEL_CACHE"}  # models/registry.py: models/ does not import streams/


def test_compose_runs_kraft_kafka_a_state_role_and_an_llm_role_on_a_gpu():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    kafka, state, llm = (compose["services"][name] for name in ("kafka", "state", "llm"))
    assert kafka["image"].startswith("apache/kafka:")
    assert kafka["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, no ZooKeeper
    assert all(port.startswith("127.0.0.1:") for port in kafka["ports"] + state["ports"] + llm["ports"])
    fields = {f"MMSR_{name.upper()}" for name in Settings.model_fields}
    for worker, role in ((state, "state"), (llm, "llm")):
        names = set(worker["environment"])
        assert names and names <= fields | READ_OUTSIDE_SETTINGS, names - fields - READ_OUTSIDE_SETTINGS
        assert worker["environment"]["MMSR_ROLE"] == role
        assert worker["depends_on"]["kafka"]["condition"] == "service_healthy"
        assert worker["command"][0] == "worker"
    [device] = llm["deploy"]["resources"]["reservations"]["devices"]
    assert "gpu" in device["capabilities"] and "deploy" not in state
    assert llm["environment"]["MMSR_GENERATION_KV_CACHE"] == "${MMSR_GENERATION_KV_CACHE:-static}"  # compiled decoding
    assert state["environment"]["MMSR_SASL_PASSWORD"] == "${MMSR_SASL_PASSWORD:-}"  # from the host's environment
