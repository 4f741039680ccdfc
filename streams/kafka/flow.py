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
    report["agents"] = readable(agents_report, app, topic)
    report["aiokafka"] = readable(aiokafka_report, consumer, tp)
    return report


def readable(report, *args):
    """A report of internals read from another task or thread: what it read, or why it could not."""
    try:
        return report(*args)
    except Exception as exc:  # a diagnosis says so and goes on
        return f"unreadable: {type(exc).__name__}: {exc}"


def aiokafka_report(consumer, tp) -> dict:
    """aiokafka's state of the partition: position, pause, reset, high watermark, prefetched records."""
    client = consumer._thread._ensure_consumer()
    state = client._subscription.subscription.assignment.state_value(tp)
    fetcher = client._fetcher
    return {
        "assigned": state is not None,
        "position": state._position if state is not None else None,
        "paused": state.paused if state is not None else None,
        "awaiting_reset": state.awaiting_reset if state is not None else None,
        "highwater": state.highwater if state is not None else None,
        "prefetched": fetcher._records.get(tp) is not None,
        "fetch_in_flight": bool(fetcher._in_flight)}


def agents_report(app, topic: str) -> list[dict]:
    """Where a record delivered to a stream but not yet acknowledged can be: the stream's current
    event, and each batching generator (Faust's ``take_events``, ``take_events_until_quiet``)
    with its buffered events and what it waits on. Read from the generators' frames: these
    buffers are local variables, reachable no other way; a diagnosis only."""
    reports = []
    for agent in app.agents.values():
        if topic not in getattr(agent.channel, "topics", ()):
            continue
        for actor in list(agent._actors):
            stream = actor.stream
            event = stream.current_event
            reports.append({
                "agent": agent.name, "passive": bool(getattr(stream, "_passive", False)),
                "current_offset": event.message.offset if event is not None else None,
                "batchers": [batcher_report(agen) for agen in list(stream._active_agens)]})
    return reports


def batcher_report(agen) -> dict:
    frame = agen.ag_frame
    if frame is None:
        return {"finished": True}
    local = frame.f_locals
    events = local.get("events") or []
    consuming = local.get("buffer_consuming", local.get("consuming"))
    full = local.get("buffer_full")
    return {
        "running": agen.ag_running, "waiting_on": repr(agen.ag_await)[:120],
        "buffered_offsets": [e.message.offset for e in events][-5:], "buffered": len(events),
        # Faust's take keeps the values apart from the events and hands a batch over only when
        # the values are there: the two counts must agree
        "buffered_values": len(local["buffer"]) if "buffer" in local else None,
        "handing_over": None if consuming is None else ("done" if consuming.done() else "pending"),
        "full": full.is_set() if full is not None else None}
