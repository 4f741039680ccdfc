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


@pytest.fixture
def topic_factory(kafka_broker, tmp_path):
    """Creates the five topics under a unique prefix and returns matching settings + env vars."""
    from streams.kafka.admin import create_topics
    from streams.kafka.launcher import free_port
    from streams.settings import Settings

    def make(**overrides) -> Env:
        prefix = f"t{uuid.uuid4().hex[:8]}"
        values = {
            "bootstrap_servers": kafka_broker.bootstrap, "data_dir": str(tmp_path / prefix),
            "app_id": f"{prefix}-app", "web_port": free_port(),
            "topic_items": f"{prefix}-items", "topic_interactions": f"{prefix}-interactions",
            "topic_user_summaries": f"{prefix}-user-summaries", "topic_recommendations": f"{prefix}-recommendations",
            "topic_dead_letters": f"{prefix}-dead-letters", "topic_caption_requests": f"{prefix}-caption-requests",
            "topic_item_pairs": f"{prefix}-item-pairs",
            "debounce_seconds": 0.2,
            # the backbone tests run without the LLM stages; tests of those stages turn them on
            "summary_model": "none", "caption_model": "none",
            **overrides,
        }
        settings = Settings(**values)
        create_topics(settings)
        return Env(settings, settings.to_env())

    return make


@pytest.fixture
def worker_factory(tmp_path):
    workers: list[WorkerProcess] = []

    def make(env: Env) -> WorkerProcess:
        worker = WorkerProcess(env.env, env.web_port, tmp_path / f"worker-{len(workers)}.log", cwd=ROOT)
        workers.append(worker)
        return worker

    yield make
    for worker in workers:
        worker.stop()
