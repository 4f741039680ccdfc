"""Everything the worker reads of Faust's and aiokafka's private state, in one place.

``streams.kafka.flow`` reports a partition through the layers of Faust and aiokafka from their
private attributes (the consumer's flow, stream buffers, agents' batchers, aiokafka's fetcher
positions), and ``streams.kafka.compat`` checks the patch targets at start. An upgrade of the
Faust stack that moves any of them fails here first, rather than across the suite.
"""
from __future__ import annotations

import pytest

from tests.integration.test_end_to_end import catalog_in_valid_lists_out

pytestmark = pytest.mark.integration


def test_the_flow_report_reads_every_layer_of_a_running_worker(topic_factory, worker_factory):
    env = topic_factory(top_k=10)
    worker = worker_factory(env).start()
    _, events = catalog_in_valid_lists_out(env, worker, users=6, per_user=5, k=10)
    # why a partition would not progress: the consumer's flow, per stream its buffer
    flow = worker.get("/debug/flow")
    assert flow["flow_active"] and not flow["paused_for_full_buffer"]
    assert f"{env.topic_interactions}/0" in flow["assigned"] and f"{env.topic_interactions}/0" in flow["fetching"]
    assert flow["streams"][env.topic_interactions]["buffered_events"] == 0
    assert flow["streams"][env.topic_interactions]["channels"] >= 1
    # and each partition through Faust's and aiokafka's layers: fetched, positioned at the log end
    # (every event was applied and acknowledged), nothing waiting in a buffer
    partitions = [worker.get(f"/debug/flow/{env.topic_interactions}/{p}") for p in range(env.user_partitions)]
    for one in partitions:
        assert one["faust_fetches"] and not one["faust_paused"] and not one["faust_paused_for_full_buffer"]
        kafka = one["aiokafka"]
        assert kafka["assigned"] and not kafka["paused"] and not kafka["awaiting_reset"]
        assert kafka["position"] == kafka["highwater"]
        assert one["faust_unacked"] == 0 and one["stream_buffers"] and not any(one["stream_buffers"])
        # the interactions agent's batcher: waiting for events, none held
        [agent] = one["agents"]
        assert agent["agent"] == "interactions" and agent["passive"]
        takes = [b for b in agent["batchers"] if b["full"] is not None]  # the stream's own iterator is listed too
        assert len(takes) == 1 and not takes[0]["full"] and all(b["buffered"] == 0 for b in agent["batchers"])
        assert takes[0]["buffered_values"] == 0
    assert sum(one["aiokafka"]["position"] for one in partitions) == len(events)
    assert worker.get(f"/debug/flow/{env.topic_interactions}/99") is None
