"""A SASL_SSL broker from the launcher: every client authenticates, wrong credentials fail in one line."""
from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time

import pytest

from streams.harness.process import WorkerProcess, wait_until
from streams.kafka.launcher import LocalKafka, free_port
from tests.conftest import ROOT, make_env
from tests.integration import helpers

pytestmark = pytest.mark.integration

USER = "alice"


def mmsr(*args, env, timeout=120):
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "streams.cli", *args], capture_output=True, text=True,
                         env={**os.environ, **env}, timeout=timeout, cwd=ROOT)
    out.seconds = time.monotonic() - started
    return out


@pytest.fixture(scope="module")
def secured_broker(tmp_path_factory):
    """`mmsr kafka start` with MMSR_SECURITY_PROTOCOL=SASL_SSL: a password made for this run only."""
    data = tmp_path_factory.mktemp("sasl")
    password = secrets.token_urlsafe(16)
    env = {"MMSR_DATA_DIR": str(data), "MMSR_SECURITY_PROTOCOL": "SASL_SSL", "MMSR_SASL_USERNAME": USER,
           "MMSR_SASL_PASSWORD": password}
    out = mmsr("kafka", "start", "--port", "0", "--timeout", "120", env=env, timeout=240)
    assert out.returncode == 0, out.stderr
    info = LocalKafka(data / "kafka").status()
    assert info.security_protocol == "SASL_SSL" and "MMSR_SSL_CAFILE=" in out.stdout
    assert password not in out.stdout + out.stderr
    yield info, password
    LocalKafka(data / "kafka").stop()


def client_env(info, password, tmp_path, mechanism="SCRAM-SHA-512") -> dict:
    """MMSR_ variables of a test's own topics on the secured broker (created with these credentials)."""
    return make_env(info.bootstrap, tmp_path, security_protocol="SASL_SSL", sasl_mechanism=mechanism,
                    sasl_username=USER, sasl_password=password, ssl_cafile=info.ca_file).env


def test_worker_produce_replay_and_tail_work_with_the_right_credentials(secured_broker, tmp_path):
    info, password = secured_broker
    env = client_env(info, password, tmp_path)
    items, log = tmp_path / "items.jsonl", tmp_path / "log.jsonl"
    items.write_text("".join(json.dumps(item) + "\n" for item in helpers.catalog(12)))
    log.write_text("".join(json.dumps(e) + "\n" for e in helpers.interactions(users=3, per_user=3, n_items=12)))
    assert mmsr("topics", "create", env=env).stdout.count(": exists") == 10  # made by make_env, same credentials
    worker = WorkerProcess(env, free_port(), tmp_path / "worker.log", cwd=ROOT)
    try:
        worker.start(timeout=300)
        produced = mmsr("produce", "items", str(items), env=env)
        assert produced.returncode == 0 and "12 items delivered" in produced.stdout, produced.stderr
        wait_until(lambda: worker.metric("catalog_items") >= 12, timeout=60, message="items over SASL_SSL")
        replayed = mmsr("replay", "--source", str(log), "--no-backfill", env=env)
        assert replayed.returncode == 0 and "9 interactions replayed" in replayed.stdout, replayed.stderr
        wait_until(lambda: worker.metric("recommendations_emitted_total") >= 3, timeout=120, message="three lists")
        tail = mmsr("recs", "tail", "--idle", "5", env=env)
        assert tail.returncode == 0, tail.stderr
        assert {f"user u{u} " for u in range(3)} <= {line.split("(")[0] for line in tail.stdout.splitlines()}
    finally:
        worker.stop()
    assert password not in worker.log.read_text()


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256"])
def test_wrong_credentials_are_one_clear_line_for_every_client(secured_broker, tmp_path, mechanism):
    info, password = secured_broker
    env = {**client_env(info, password, tmp_path), "MMSR_SASL_MECHANISM": mechanism,
           "MMSR_SASL_PASSWORD": "not-the-password"}
    log = tmp_path / "log.jsonl"
    log.write_text(json.dumps(helpers.interactions(users=1, per_user=1)[0]) + "\n")
    web = str(free_port())
    for args in (("produce", "interactions", str(log)), ("replay", "--source", str(log)), ("recs", "tail"),
                 ("topics", "create"), ("worker", "--web-port", web)):
        out = mmsr(*args, env=env)
        lines = out.stderr.strip().splitlines()
        assert out.returncode != 0 and len(lines) == 1, (args, out.stderr[-1500:])
        assert "Traceback" not in out.stderr and "authentication" in lines[0].lower(), (args, lines)
        assert out.seconds < 60, (args, out.seconds)  # no hang on librdkafka's endless retries


def test_no_secret_of_the_local_broker_goes_on_a_command_line(tmp_path, monkeypatch):
    """``ps`` shows every process's arguments to every user of the machine. The SCRAM passwords
    went on kafka-storage's (``--add-scram ...password=...``) and the key-store password on
    keytool's (``-storepass``). Every command the launcher runs is recorded here, for real."""
    import streams.kafka.launcher as launcher

    commands = []
    run, popen = subprocess.run, subprocess.Popen

    def recorded_run(cmd, *args, **kwargs):
        commands.append(list(map(str, cmd)))
        return run(cmd, *args, **kwargs)

    class RecordedPopen(popen):
        def __init__(self, cmd, *args, **kwargs):
            commands.append(list(map(str, cmd)))
            super().__init__(cmd, *args, **kwargs)

    monkeypatch.setattr(launcher.subprocess, "run", recorded_run)
    monkeypatch.setattr(launcher.subprocess, "Popen", RecordedPopen)
    password = secrets.token_urlsafe(16)
    broker = LocalKafka(tmp_path / "kafka")
    info = broker.start(port=0, timeout=120, sasl_users={USER: password})
    try:
        store_password = (tmp_path / "kafka" / "server.properties").read_text().split(
            "ssl.keystore.password=", 1)[1].split("\n", 1)[0]
        assert any("keytool" in c[0] for c in commands) and any("StorageTool" in " ".join(c) for c in commands)
        for secret in (password, store_password):
            assert not [c for c in commands if any(secret in arg for arg in c)]
        # and the SCRAM users still authenticate, with both mechanisms
        from confluent_kafka.admin import AdminClient

        for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-512"):
            admin = AdminClient({"bootstrap.servers": info.bootstrap, "security.protocol": "SASL_SSL",
                                 "sasl.mechanism": mechanism, "sasl.username": USER, "sasl.password": password,
                                 "ssl.ca.location": info.ca_file, "log_level": 0})
            assert admin.list_topics(timeout=30).brokers
    finally:
        broker.stop()
