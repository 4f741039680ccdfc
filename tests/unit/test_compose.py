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


def test_each_role_scales_to_several_replicas_on_one_host():
    """`docker compose up --scale state=N`: a fixed host port would be taken by the first replica
    ("port is already allocated"), and one named volume at MMSR_DATA_DIR would put every replica's
    RocksDB tables in one directory, where each opens every global-table partition. Each replica
    gets a host port from a range and a data directory of its own; the model cache is shared."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    ranges = []
    for name in ("state", "llm"):
        worker = compose["services"][name]
        [published] = worker["ports"]
        host, ports, container = published.split(":")
        first, last = (int(p) for p in ports.split("-"))
        assert host == "127.0.0.1" and last - first >= 3 and int(container) == int(worker["environment"].get(
            "MMSR_WEB_PORT", compose["services"]["state"]["environment"]["MMSR_WEB_PORT"]))
        ranges.append(range(first, last + 1))
        data_dir = worker["environment"].get("MMSR_DATA_DIR", compose["services"]["state"]["environment"]["MMSR_DATA_DIR"])
        for volume in worker["volumes"]:
            parts = volume.split(":")
            target = parts[0] if len(parts) == 1 else parts[1]
            if len(parts) > 1 and not parts[0].startswith("."):  # a named volume: shared by every replica
                assert not (data_dir + "/").startswith(target.rstrip("/") + "/"), f"{name}: {volume} shares {data_dir}"
            if parts[0].startswith("."):
                assert parts[-1] == "ro", volume  # host folders of trained models are only read
        assert worker["environment"].get("MMSR_MODEL_CACHE", compose["services"]["state"]["environment"][
            "MMSR_MODEL_CACHE"]) == "/models" and "model-cache:/models" in worker["volumes"]
    assert not set(ranges[0]) & set(ranges[1])
    assert "/data" in compose["services"]["state"]["volumes"]  # the state role's tables: one volume per replica
    assert compose["services"]["state"]["environment"]["MMSR_RETRIEVAL_MODEL"] == "${MMSR_RETRIEVAL_MODEL:-none}"
    assert "./models-trained:/models-trained:ro" in compose["services"]["state"]["volumes"]


def test_the_image_is_built_without_the_hosts_virtualenv_state_or_compiled_fold():
    """`COPY . .` would otherwise copy .venv (gigabytes, built for the host), the demo's broker
    and RocksDB data, trained models (mounted instead) and the host's build of models/_cooccurrence."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    dockerfile = compose["services"]["state"]["build"]["dockerfile_inline"]
    assert "COPY . ." in dockerfile
    assert dockerfile.index("gcc") < dockerfile.index("pip install")  # the image builds its own fold
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".venv", ".git", ".mmsr", ".mmsr-demo", "models/*.so", "models-trained", "adapters"} <= ignored
    assert not ignored & {"streams", "models", "schemas", "pyproject.toml", "setup.py"}
