"""The local broker launcher and the CLI against the real broker."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from streams.kafka.admin import create_topics
from streams.kafka.launcher import LauncherError, LocalKafka, pid_alive
from streams.kafka.client import read_all

pytestmark = pytest.mark.integration


def mmsr(*args, env=None, input=None):
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, input=input, timeout=120)


def test_busy_port_is_a_clear_error(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(LauncherError, match=f"port {port} .* busy.*--port 0"):
            LocalKafka(tmp_path / "k").start(port=port)


def test_start_tool_stop_leaves_no_process(tmp_path, kafka_broker):
    """A second broker from the cached jars; Kafka's own tools run from the same jars."""
    data = tmp_path / "kafka"
    out = mmsr("kafka", "start", "--port", "0", env={"MMSR_DATA_DIR": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    info = LocalKafka(data).status()
    assert info is not None and "127.0.0.1" in out.stdout
    assert mmsr("kafka", "start", "--port", "0", env={"MMSR_DATA_DIR": str(tmp_path)}).returncode == 0  # idempotent
    assert LocalKafka(data).status().pid == info.pid
    tool = mmsr("kafka", "tool", "kafka-topics", "--bootstrap-server", info.bootstrap, "--create", "--topic",
                "tool-made", "--partitions", "2", env={"MMSR_DATA_DIR": str(tmp_path)})
    assert tool.returncode == 0, tool.stderr
    listed = mmsr("kafka", "tool", "kafka-topics", "--bootstrap-server", info.bootstrap, "--list",
                  env={"MMSR_DATA_DIR": str(tmp_path)})
    assert "tool-made" in listed.stdout
    assert mmsr("kafka", "stop", env={"MMSR_DATA_DIR": str(tmp_path)}).returncode == 0
    assert not pid_alive(info.pid)
    status = mmsr("kafka", "status", env={"MMSR_DATA_DIR": str(tmp_path)})
    assert status.returncode == 1 and "not running" in status.stdout


def test_topics_create_is_idempotent_and_copartitioned(topic_factory):
    env = topic_factory()
    first = mmsr("topics", "create", env=env.env)
    assert first.returncode == 0 and first.stdout.count(": exists") == 10
    assert set(create_topics(env.settings).values()) == {"exists"}
    from confluent_kafka.admin import AdminClient

    md = AdminClient({"bootstrap.servers": env.bootstrap_servers}).list_topics(timeout=10).topics
    counts = {name: len(md[name].partitions) for name in (env.topic_interactions, env.topic_user_summaries,
                                                           env.topic_recommendations)}
    assert set(counts.values()) == {env.user_partitions}
    # caption requests are partitioned like items, so a caption is written where its item's profile is
    assert len(md[env.topic_caption_requests].partitions) == len(md[env.topic_items].partitions)


def test_produce_reports_rejected_lines_and_delivers_the_rest(topic_factory, tmp_path):
    env = topic_factory()
    good = {"user_id": "u1", "item_id": "i1", "type": "view", "event_time": "2026-03-01T10:00:00Z"}
    lines = [json.dumps(good), "{not json", "", json.dumps({**good, "user_id": 3}), json.dumps({**good, "item_id": "i2"})]
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(lines) + "\n")
    out = mmsr("produce", "interactions", str(path), env=env.env)
    assert out.returncode == 2
    assert "line 2: rejected" in out.stderr and "line 4: rejected" in out.stderr and "user_id" in out.stderr
    assert "2 interactions delivered, 2 rejected" in out.stdout
    got = [json.loads(m.value()) for m in read_all(env.bootstrap_servers, env.topic_interactions, idle=1)]
    assert sorted(e["item_id"] for e in got) == ["i1", "i2"]
    ok = mmsr("produce", "interactions", "-", env=env.env, input=json.dumps(good) + "\n")
    assert ok.returncode == 0 and "1 interactions delivered, 0 rejected" in ok.stdout


def test_unreachable_broker_is_one_line_error(tmp_path):
    out = mmsr("topics", "create", "--bootstrap-servers", "127.0.0.1:1", env={"MMSR_DATA_DIR": str(tmp_path)})
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr[-500:]
    assert out.returncode != 0 and "Traceback" not in out.stderr and out.stderr.startswith("Error:")
