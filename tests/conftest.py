"""Shared fixtures: one real Kafka broker per test session, unique topics and workers per test."""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from streams.harness.process import WorkerProcess, wait_until  # noqa: F401 (re-exported for tests)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory):
    """A real Apache Kafka (KRaft) from the project's launcher, on a free 127.0.0.1 port."""
    from streams.kafka.launcher import LocalKafka

    broker = LocalKafka(tmp_path_factory.mktemp("kafka"))
    info = broker.start(port=0, timeout=120)
    yield info
    broker.stop()
    assert broker.status() is None


@dataclass
class Env:
    """Settings for one test: its own topic names, app id, data dir and web port."""

    settings: object
    env: dict

    def __getattr__(self, name):
        return getattr(self.settings, name)


def make_env(bootstrap: str, data_root: Path, **overrides) -> Env:
    """Settings for one test on ``bootstrap``: topics under a unique prefix (created), its own
    app id, data dir and web port; the LLM stages off unless the test turns them on."""
    from streams.kafka.admin import create_topics
    from streams.kafka.launcher import free_port
    from streams.settings import Settings, prefixed_topics

    prefix = f"t{uuid.uuid4().hex[:8]}"
    values = {
        "bootstrap_servers": bootstrap, "data_dir": str(data_root / prefix),
        "app_id": f"{prefix}-app", "web_port": free_port(),
        **prefixed_topics(prefix),
        "debounce_seconds": 0.2,
        "summary_model": "none", "caption_model": "none",
        **overrides,
    }
    settings = Settings(**values)
    create_topics(settings)
    return Env(settings, settings.to_env())


@pytest.fixture
def topic_factory(kafka_broker, tmp_path):
    """Creates the topics under a unique prefix and returns matching settings + env vars."""

    def make(**overrides) -> Env:
        return make_env(kafka_broker.bootstrap, tmp_path, **overrides)

    return make


@pytest.fixture
def worker_factory(tmp_path):
    workers: list[WorkerProcess] = []

    def make(env: Env, peer: bool = False) -> WorkerProcess:
        """``peer``: another member of the same group, with its own state directory and web port."""
        from streams.kafka.launcher import free_port

        n = len(workers)
        vars, port = env.env, env.web_port
        if peer:
            vars, port = {**env.env, "MMSR_DATA_DIR": f"{env.env['MMSR_DATA_DIR']}-peer{n}"}, free_port()
        worker = WorkerProcess(vars, port, tmp_path / f"worker-{n}.log", cwd=ROOT)
        workers.append(worker)
        return worker

    yield make
    for worker in workers:
        worker.stop()
