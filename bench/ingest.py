"""Ingest throughput and event-to-recommendation latency on a real local broker.

Throughput: interactions applied to user state per second by one worker reading a backlog of
N (from its first applied interaction until its applied counter reaches N; "folded" waits for
the item-keyed increments too), against a plain confluent-kafka consumer that reads and
JSON-decodes the same topic on the same broker in the same run.
With ``--before-tree`` the code before a change is measured the same way in the same run, and
with ``--rounds N`` before and after alternate N times (this machine's speed drifts by a fifth
within an hour), the medians reported with each round's ratio.
Latency (for the code before a change too, its worker restarted on its own topics):
fresh interactions at a steady rate; p50/p99 of the time from the interaction's
broker timestamp to the emission of its refreshed list (as the worker records it), with the
debounce window reported alongside.
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from confluent_kafka import Consumer

from streams import replay as rp
from streams.kafka.admin import create_topics
from streams.kafka.client import InteractionProducer, read_all
from streams.kafka.launcher import LocalKafka, free_port
from streams.harness.process import WorkerProcess, wait_until
from streams.settings import Settings, prefixed_topics
from bench import write_result


def baseline_consume(bootstrap: str, topic: str, n: int) -> float:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    seen, start = 0, None
    while seen < n:
        for msg in consumer.consume(500, timeout=1.0):
            if msg.error():
                continue
            start = start or time.perf_counter()
            json.loads(msg.value())
            seen += 1
    elapsed = time.perf_counter() - start
    consumer.close()
    return seen / elapsed


def ingest(info, tmp: Path, name: str, events: list[dict], on_restart=None, tree: Path | None = None,
           **overrides) -> tuple[dict, WorkerProcess, Settings]:
    """One worker on its own topics, measured on a backlog: the catalog applied first, the worker
    stopped, ``events`` produced, the worker started again on them. The rate counts from the
    first applied interaction to the last, so start-up and the producer's speed are left out.
    ``on_restart(worker)`` is called once the worker is up again (the profiler attaches there);
    ``tree``: a checkout whose worker code runs instead of this one (the "before" of a change)."""
    port = free_port()
    values = {"bootstrap_servers": info.bootstrap, "data_dir": str(tmp / name), "web_port": port,
              "debounce_seconds": 0.05, "app_id": f"bench-{name}",
              "summary_model": "none", "caption_model": "none",  # the backbone alone: see bench/summaries.py
              **prefixed_topics(name),
              **overrides}
    settings = Settings(**values)
    create_topics(settings)
    # the code before a change runs with its own defaults: given all of this code's, it measured
    # this code's settings (a round's changed fold batching showed on both sides)
    env = settings.to_env(only=values) if tree is not None else settings.to_env()
    worker = WorkerProcess(env, port, tmp / f"worker-{name}.log", cwd=tree)
    worker.start()
    catalog = rp.publish_movielens_items(info.bootstrap, settings.topic_items, progress=False)
    wait_until(lambda: worker.metric("items_applied_total") >= catalog, timeout=900, interval=1.0, message="catalog")
    items = {n: worker.metric(n) for n in ("items_applied_total", "items_embedded_total", "catalog_items")}
    worker.stop()
    rp.replay(info.bootstrap, settings.topic_interactions, events, backfill=False, progress=False)
    worker.start(timeout=600)
    if on_restart is not None:
        on_restart(worker)
    first = wait_until(lambda: (lambda n: n and (time.perf_counter(), n))(worker.metric("events_applied_total")),
                       timeout=600, interval=0.05, message="first applied")
    wait_until(lambda: worker.metric("events_applied_total") >= len(events), timeout=1800, interval=0.25,
               message="all applied")
    applied_s = time.perf_counter() - first[0]
    # how much of the fold kept pace: 0 when item pairs wait until every interaction is applied
    folded_share = worker.metric("pair_entries_applied_total") / max(worker.metric("pair_entries_total"), 1.0)
    wait_until(lambda: worker.metric("pair_entries_applied_total") >= worker.metric("pair_entries_total"),
               timeout=1800, interval=0.25, message="item-keyed increments folded")
    folded_s = time.perf_counter() - first[0]
    counted = len(events) - first[1]
    return {"catalog": {"published": catalog, **items},
            "worker_applied_per_s": round(counted / applied_s, 1),
            "worker_applied_and_folded_per_s": round(counted / folded_s, 1),
            "folded_share_when_all_applied": round(folded_share, 3),
            "pair_entries": worker.metric("pair_entries_total"),
            "pair_messages": worker.metric("pair_messages_total"),
            # write amplification: each fold batch stores every item record it changed
            "fold_batches": worker.metric("pair_batches_total"),
            "records_written": worker.metric("neighbour_records_written_total")}, worker, settings


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=100000)
    parser.add_argument("--latency-events", type=int, default=300)
    parser.add_argument("--latency-rate", type=float, default=30.0)
    parser.add_argument("--role", default="state", help="the worker's role (the issue's figure is for 'state')")
    parser.add_argument("--before-tree", type=Path, default=None,
                        help="a checkout of the code before the change: its worker is measured too (co-occurrence on)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="with --before-tree: before and after (co-occurrence on) measured this many times, "
                             "alternated, so a drift in the machine's speed hits both; the medians are reported")
    parser.add_argument("--out", default="bench/results/ingest.json")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="mmsr-bench-"))
    broker = LocalKafka(tmp / "kafka")
    info = broker.start(port=0)
    workers = []
    try:
        events = rp.movielens_events()[: args.events]
        before, rounds, before_run = None, [], None
        for n in range(args.rounds if args.before_tree is not None else 0):  # the last "after" stays up below
            run, worker, before_settings = ingest(info, tmp, f"before-{n}", events, tree=args.before_tree.resolve(),
                                                  cooccurrence=True, role=args.role)
            worker.stop()
            before_run = worker, before_settings
            rounds.append({"before": run})
            if n < args.rounds - 1:
                rounds[-1]["after"], worker, _ = ingest(info, tmp, f"cooc-on-{n}", events, cooccurrence=True,
                                                        role=args.role)
                worker.stop()
        off, worker, settings = ingest(info, tmp, "cooc-off", events, cooccurrence=False, role=args.role)
        worker.stop()
        on, worker, settings = ingest(info, tmp, "cooc-on", events, cooccurrence=True, role=args.role)
        workers.append(worker)
        if rounds:
            rounds[-1]["after"] = on
            before = {**medians([r["before"] for r in rounds]), "tree": git_head(args.before_tree)}
            on = {**on, **medians([r["after"] for r in rounds])}
        baseline_rate = baseline_consume(info.bootstrap, settings.topic_interactions, len(events))

        users = sorted({e["user_id"] for e in events})
        lat = latency(info, worker, settings, users, args.latency_events, args.latency_rate)
        before_lat = None
        if before_run is not None:  # the code before, on its own topics, measured the same way after it
            before_worker, before_settings = before_run
            before_worker.start(timeout=600)
            workers.append(before_worker)
            before_lat = latency(info, before_worker, before_settings, users, args.latency_events, args.latency_rate)
        result = {
            "benchmark": "ingest",
            "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version(),
                        "kafka": info.version},
            "events": len(events),
            "role": args.role,
            "cooccurrence_on": on,
            "cooccurrence_off": off,
            "before_cooccurrence_on": before,
            "after_to_before": before and {
                k: round(on[k] / before[k], 2) for k in ("worker_applied_per_s", "worker_applied_and_folded_per_s")},
            "rounds": [{side: {k: r[side][k] for k in RATES} for side in ("before", "after")} for r in rounds],
            "after_to_before_by_round": [{k: round(r["after"][k] / r["before"][k], 2) for k in RATES} for r in rounds],
            "baseline_confluent_consumer_per_s": round(baseline_rate, 1),
            "ratio_worker_to_baseline": {
                "cooccurrence_on": round(on["worker_applied_per_s"] / baseline_rate, 4),
                "cooccurrence_off": round(off["worker_applied_per_s"] / baseline_rate, 4)},
            "ratio_on_to_off": round(on["worker_applied_and_folded_per_s"] / off["worker_applied_and_folded_per_s"], 3),
            "latency": {**lat, "rate_per_s": args.latency_rate, "cooccurrence": True,
                        "debounce_ms": settings.debounce_seconds * 1000},
            "latency_before": before_lat,
        }
        write_result(args.out, result)
    finally:
        for worker in workers:
            worker.stop()
        broker.stop()


RATES = ("worker_applied_per_s", "worker_applied_and_folded_per_s")


def latency(info, worker: WorkerProcess, settings: Settings, users: list[str], n: int, rate: float) -> dict:
    """Fresh interactions at a steady rate to a worker that has caught up: the time from each
    one's broker timestamp to its refreshed list (as the worker records it)."""
    emitted_before = worker.metric("recommendations_emitted_total")
    producer = InteractionProducer(info.bootstrap, settings.topic_interactions)
    t0 = time.perf_counter()
    for i in range(n):
        now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        producer.interaction(users[i % len(users)], str(1 + (i * 37) % 1682), "view", now)
        producer._producer.flush()
        delay = (i + 1) / rate - (time.perf_counter() - t0)
        if delay > 0:
            time.sleep(delay)
    producer.flush()
    wait_until(lambda: worker.metric("recommendations_emitted_total") >= emitted_before + n * 0.9,
               timeout=120, message="lists for the latency run")
    time.sleep(2)
    recs = [json.loads(m.value()) for m in read_all(info.bootstrap, settings.topic_recommendations, timeout=30)]
    lat = np.array([r["latency_ms"] for r in recs if r["trigger"]["kind"] == "interaction"])
    return {"lists": int(lat.size), "p50_ms": round(float(np.percentile(lat, 50)), 1),
            "p99_ms": round(float(np.percentile(lat, 99)), 1), "max_ms": round(float(lat.max()), 1)}


def medians(runs: list[dict]) -> dict:
    """The median of each rate over alternated runs of one variant (one run: its own figures)."""
    return {k: round(float(np.median([r[k] for r in runs])), 1) for k in RATES}


def git_head(tree: Path) -> str:
    import subprocess

    return subprocess.run(["git", "-C", str(tree), "log", "-1", "--format=%h %s"], capture_output=True,
                          text=True).stdout.strip()[:100]


if __name__ == "__main__":
    main()
