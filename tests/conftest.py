"""Shared fixtures: one real Kafka broker per test session, unique topics and workers per test."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

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
            "topic_dead_letters": f"{prefix}-dead-letters", "debounce_seconds": 0.2,
            **overrides,
        }
        settings = Settings(**values)
        create_topics(settings)
        env = {f"MMSR_{k.upper()}": str(v) for k, v in values.items()}
        return Env(settings, env)

    return make


class WorkerProcess:
    """`mmsr worker` as a child process, as users run it; kill -9 and restart for crash tests."""

    def __init__(self, env: Env, log: Path):
        self.env, self.log, self.proc = env, log, None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.env.web_port}"

    def start(self, timeout: float = 120.0) -> "WorkerProcess":
        full_env = {**os.environ, **self.env.env, "PYTHONUNBUFFERED": "1"}
        out = open(self.log, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker", "--loglevel", "info"],
                                     env=full_env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                if self.get("/health")["status"] == "ok":
                    return self
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.5)
        raise TimeoutError(f"worker not healthy in {timeout}s: {self.log.read_text()[-2000:]}")

    def get(self, path: str):
        try:
            with urllib.request.urlopen(self.url + path, timeout=10) as resp:
                body = resp.read().decode()
        except urllib.error.HTTPError as err:
            body = err.read().decode()
            if err.code == 404:
                return None
            if err.code != 503:
                raise
        return body if path.startswith("/metrics") else json.loads(body)

    def metric(self, name: str) -> float:
        total = 0.0
        for line in self.get("/metrics").splitlines():
            if line.startswith(f"mmsr_{name}{{") or line.startswith(f"mmsr_{name} "):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self, timeout: float = 60.0) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def worker_factory(tmp_path):
    workers: list[WorkerProcess] = []

    def make(env: Env) -> WorkerProcess:
        worker = WorkerProcess(env, tmp_path / f"worker-{len(workers)}.log")
        workers.append(worker)
        return worker

    yield make
    for worker in workers:
        worker.stop()


def wait_until(predicate, timeout: float = 60.0, interval: float = 0.5, message: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}; last={last!r}")
