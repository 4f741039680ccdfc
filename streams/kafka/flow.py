"""Why a partition is not progressing, layer by layer: Faust's flow and fetch set, its stream
buffers, and aiokafka's own state of the partition (position, pause, prefetched records).

Read from the worker's loop while the consumer runs in its own thread, so a figure may be a step
old; it is for ``GET /debug/flow`` and for the offset guard's warning when a stream stops
delivering a partition, so that the next such stall names the layer that held it."""
from __future__ import annotations


def label(tp) -> str:
    return f"{tp.topic}/{tp.partition}"


def flow_report(app) -> dict:
    """The consumer's flow, the partitions it fetches and those Faust paused for a full buffer,
    and each stream's buffered events."""
    consumer = app.consumer
    streams: dict = {}
    for channel in app.topics._topics:  # several channels can read one topic: summed, not overwritten
        queue = channel.queue
        stream = streams.setdefault(", ".join(channel.topics), {
            "channels": 0, "buffered_events": 0, "buffer_size": queue.maxsize, "partitions_awaiting_a_pressure_drop": 0})
        stream["channels"] += 1
        stream["buffered_events"] += queue.qsize()
        stream["partitions_awaiting_a_pressure_drop"] += len(queue._pending_pressure_drop_callbacks)
    return {
        "flow_active": consumer.flow_active, "in_recovery": app.in_recovery, "rebalancing": bool(app.rebalancing),
        "assigned": sorted(map(label, consumer.assignment())),
        "fetching": sorted(map(label, consumer._get_active_partitions())),
        "paused_for_full_buffer": sorted(map(label, consumer._buffered_partitions)),
        "streams": streams}


def partition_report(app, topic: str, partition: int) -> dict:
    """One partition through the layers: whether Faust fetches it, what Faust last read and
    committed, and aiokafka's position, pause and prefetched records for it."""
    consumer = app.consumer
    tp = next((tp for tp in consumer.assignment() if tp.topic == topic and tp.partition == partition), None)
    if tp is None:
        return {"assigned": False}
    report = {
        "assigned": True, "flow_active": consumer.flow_active,
        "faust_fetches": tp in consumer._get_active_partitions(),
        "faust_paused": tp in consumer._paused_partitions,
        "faust_paused_for_full_buffer": tp in consumer._buffered_partitions,
        "faust_read_offset": consumer._read_offset.get(tp),
        "faust_committed_offset": consumer._committed_offset.get(tp),
        "faust_unacked": sum(1 for m in consumer._unacked_messages if m.tp == tp),
        "stream_buffers": [c.queue.qsize() for c in app.topics._topics if topic in c.topics]}
    report.update(aiokafka_report(consumer, tp))
    return report


def aiokafka_report(consumer, tp) -> dict:
    """aiokafka's state of the partition, or why it could not be read."""
    try:
        client = consumer._thread._ensure_consumer()
        assignment = client._subscription.subscription.assignment
        state = assignment.state_value(tp)
        fetcher = client._fetcher
        prefetched = fetcher._records.get(tp)
        return {
            "aiokafka_assigned": state is not None,
            "aiokafka_position": state._position if state is not None else None,
            "aiokafka_paused": state.paused if state is not None else None,
            "aiokafka_awaiting_reset": state.awaiting_reset if state is not None else None,
            "aiokafka_highwater": state.highwater if state is not None else None,
            "aiokafka_prefetched": prefetched is not None,
            "aiokafka_fetch_in_flight": bool(fetcher._in_flight)}
    except Exception as exc:  # aiokafka's internals, read from another thread: say so, go on
        return {"aiokafka": f"unreadable: {type(exc).__name__}: {exc}"}
