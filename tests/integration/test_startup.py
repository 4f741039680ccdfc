"""A worker starts even when the cluster metadata does not list the global tables' changelogs yet
when it joins its group (Faust creates them a moment before it subscribes)."""
from __future__ import annotations

import os
from dataclasses import replace

import pytest

from tests.conftest import ROOT
from tests.integration.test_end_to_end import catalog_in_valid_lists_out

pytestmark = pytest.mark.integration

# imported by the worker's interpreter at start (``sitecustomize``): for its first seconds the
# cluster metadata does not list the two global tables' changelogs, as on a broker whose metadata
# lags the topics Faust has just created (seen on a fresh broker under load)
HIDE_GLOBAL_CHANGELOGS = '''
import time
from aiokafka.cluster import ClusterMetadata

_listed = ClusterMetadata.partitions_for_topic
_first = []


def partitions_for_topic(self, topic):
    if topic.endswith(("-item-profiles-changelog", "-item-neighbours-changelog")):
        _first.append(_first[0] if _first else time.monotonic())
        if time.monotonic() - _first[0] < {hide_s}:
            return None
    return _listed(self, topic)


ClusterMetadata.partitions_for_topic = partitions_for_topic
'''


def test_the_leader_waits_for_the_metadata_to_list_a_new_global_changelog_before_it_assigns(
        topic_factory, worker_factory, tmp_path):
    """Faust as it comes hung here for good after "Ignoring missing topic" (KeyError in its assignor)."""
    env = hiding_global_changelogs(topic_factory(top_k=5), tmp_path, hide_s=4)
    worker = worker_factory(env).start(timeout=120)
    log = worker.log.read_text()
    assert "waiting for the cluster metadata to list" in log  # the hook took effect
    assert "Ignoring missing topic" not in log
    # the catalog reaches the item-profiles global table, and lists come out of it
    catalog_in_valid_lists_out(env, worker, users=4, per_user=4, k=5)
    # the global tables were in the first assignment, every partition of each
    tables = assignments(worker.log.read_text())
    assert all(name in tables[0] for name in ("item-profiles-changelog", "item-neighbours-changelog",
                                                "user-state-changelog"))


def test_a_coordination_error_stops_the_worker_with_the_error_logged_and_a_restart_serves(
        topic_factory, worker_factory, tmp_path):
    """Metadata that lags past the leader's wait: Faust's assignor still raises, aiokafka hands the
    error to the application, and Faust never reads it. The worker exits 1 with the error logged,
    where it used to live on holding no partitions, with no line about why."""
    plain = topic_factory(top_k=5)
    worker = worker_factory(hiding_global_changelogs(plain, tmp_path, hide_s=90)).spawn()
    assert worker.proc.wait(timeout=150) == 1
    log = worker.log.read_text()
    assert "topics still missing from the cluster metadata" in log  # the leader's wait ran out
    failed = log.split("the consumer's group coordination failed", 1)
    assert len(failed) == 2 and "KeyError" in failed[1].split("\n", 1)[0]
    # its supervisor starts it again: on metadata as it comes, it joins and serves
    restarted = worker_factory(plain).start(timeout=120)
    catalog_in_valid_lists_out(plain, restarted, users=4, per_user=4, k=5)


def hiding_global_changelogs(env, tmp_path, hide_s: float):
    """``env`` for a worker whose metadata lists neither global changelog for its first ``hide_s``."""
    hook = tmp_path / f"hook-{hide_s}"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(HIDE_GLOBAL_CHANGELOGS.format(hide_s=hide_s))
    return replace(env, env={**env.env, "PYTHONPATH": os.pathsep.join([str(hook), str(ROOT)])})


def assignments(log: str) -> list[str]:
    """The partition tables of the worker's "Setting newly assigned partitions" lines, in order."""
    chunks = log.split("Setting newly assigned partitions")[1:]
    return [chunk.split("\n[20", 1)[0] for chunk in chunks]


def test_a_restore_that_fails_stops_the_worker_with_the_error_logged(topic_factory, worker_factory):
    """A user-state record that is not an object (written by hand, or by a worker of another
    version) makes the restore's scan raise. The restore ran as a task nobody awaited: its error
    went unobserved, ``restored`` was never set, and the worker waited forever while /health said
    "starting". Now the worker exits non-zero with the error in its log."""
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    from streams.kafka.security import client_config

    env = topic_factory(top_k=5)
    changelog = f"{env.settings.group_id}-user-state-changelog"
    admin = AdminClient(client_config(env.settings))
    admin.create_topics([NewTopic(changelog, env.settings.user_partitions, 1,
                                  config={"cleanup.policy": "compact"})])[changelog].result()
    producer = Producer(client_config(env.settings))
    producer.produce(changelog, key=b'"u1"', value=b'"not a state object"', partition=0)
    assert producer.flush(30) == 0
    worker = worker_factory(env).spawn()
    assert worker.proc.wait(timeout=150) != 0
    log = worker.log.read_text()
    assert "restoring partitions" in log and "failed; stopping the worker" in log
    assert "AttributeError" in log.split("failed; stopping the worker", 1)[1]
