"""docker-compose.yml cannot run here (no Docker engine); check what can be checked without it."""
from pathlib import Path

import yaml

from streams.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
READ_OUTSIDE_SETTINGS = {"MMSR_MODEL_CACHE"}  # models/registry.py: models/ does not import streams/


def test_compose_runs_kraft_kafka_and_a_worker_configured_by_settings_variables():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    kafka, worker = compose["services"]["kafka"], compose["services"]["worker"]
    assert kafka["image"].startswith("apache/kafka:")
    assert kafka["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, no ZooKeeper
    assert all(port.startswith("127.0.0.1:") for port in kafka["ports"] + worker["ports"])
    fields = {f"MMSR_{name.upper()}" for name in Settings.model_fields}
    names = set(worker["environment"])
    assert names and names <= fields | READ_OUTSIDE_SETTINGS, names - fields - READ_OUTSIDE_SETTINGS
    assert worker["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert worker["command"][0] == "worker"
