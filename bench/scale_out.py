"""Scale-out on a real local broker: one against two workers, takeover time, changelog bytes per user.

- Throughput: the same MovieLens log on fresh topics, consumed from a backlog by one worker and
  then by two in one group started together (summaries off, co-occurrence on); interactions
  applied per second, from the first applied until the workers' applied counters reach N, and
  until every item-keyed increment is folded. The broker's group.initial.rebalance.delay.ms
  (``--rebalance-delay``) lets workers started together join the group's first assignment, as
  Kafka's 3 s default does in production; that wait comes before the first applied interaction
  and is not timed. On a 2-core machine two workers share the same two cores with the broker:
  the ratio says what a second process buys there, not what a second machine would.
- Takeover: two workers, one killed by -9; the time from the kill to the first list emitted for
  a user whose partition the dead worker owned (a fresh interaction for that user is sent right
  after the kill), with 0 and 1 standby replicas. It includes the group's session timeout.
- Changelog bytes: the latest user-state record per user in the changelog topic after the
  replay (what a takeover restores per user), and every record written during it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from streams import replay as rp
from streams.harness.process import WorkerProcess, wait_until
from streams.kafka.admin import create_topics
from streams.kafka.client import InteractionProducer, read_all
from streams.kafka.launcher import LocalKafka, free_port
from streams.settings import Settings, prefixed_topics
from bench import write_result

def group(info, tmp: Path, name: str, workers: int, **overrides) -> tuple[list[WorkerProcess], Settings]:
    """``workers`` members of one group on their own topics, each with its own state and port."""
    settings = Settings(bootstrap_servers=info.bootstrap, data_dir=str(tmp / name), app_id=f"bench-{name}",
                        summary_model="none", caption_model="none", debounce_seconds=0.05,
                        **prefixed_topics(name), **overrides)
    create_topics(settings)
    procs = []
    for n in range(workers):
        env = {**settings.to_env(), "MMSR_DATA_DIR": str(tmp / name / f"w{n}")}
        procs.append(WorkerProcess(env, free_port(), tmp / f"worker-{name}-{n}.log").start(timeout=600))
    wait_until(lambda: all(w.get("/health")["status"] == "ok" for w in procs), timeout=300, message="group healthy")
    catalog = rp.publish_movielens_items(info.bootstrap, settings.topic_items, progress=False)
    wait_until(lambda: all(w.metric("catalog_items") >= catalog for w in procs), timeout=900, interval=1.0,
               message="catalog")
    return procs, settings


def total(procs, metric: str) -> float:
    return sum(w.metric(metric) for w in procs if w.alive())


def throughput(info, tmp: Path, workers: int, events: list[dict], name: str) -> dict:
    """On a backlog, as ``bench.ingest`` measures one worker: the group stopped after the catalog,
    the log produced, the workers started together; from the first applied interaction on."""
    procs, settings = group(info, tmp, name, workers)
    try:
        for w in procs:
            w.stop()
        rp.replay(info.bootstrap, settings.topic_interactions, events, backfill=False, progress=False)
        for w in procs:
            w.spawn()
        first = wait_until(lambda: first_applied(procs), timeout=600, interval=0.05, message="first applied")
        wait_until(lambda: total(procs, "events_applied_total") >= len(events), timeout=1800, interval=0.25,
                   message="all applied")
        applied = time.perf_counter() - first[0]
        wait_until(lambda: total(procs, "pair_entries_applied_total") >= total(procs, "pair_entries_total"),
                   timeout=1800, interval=0.25, message="increments folded")
        folded = time.perf_counter() - first[0]
        counted = len(events) - first[1]
        bytes_per_user = changelog_bytes(info, settings)
        return {"workers": workers, "events": len(events),
                "applied_per_s": round(counted / applied, 1),
                "applied_and_folded_per_s": round(counted / folded, 1),
                "events_per_worker": [int(w.metric("events_applied_total")) for w in procs],
                "changelog": bytes_per_user}
    finally:
        for w in procs:
            w.stop()


def first_applied(procs) -> tuple[float, float] | None:
    """(now, interactions applied) once any has been, while the workers may still be starting."""
    try:
        applied = total(procs, "events_applied_total")
    except (OSError, ValueError):
        return None
    return (time.perf_counter(), applied) if applied else None


def changelog_bytes(info, settings: Settings) -> dict:
    latest: dict[bytes, int] = {}
    written = records = 0
    for message in read_all(info.bootstrap, f"{settings.app_id}-user-state-changelog", timeout=120, idle=3):
        size = len(message.value() or b"")
        latest[message.key()] = size
        written += size + len(message.key() or b"")
        records += 1
    sizes = np.array(list(latest.values()))
    return {"users": int(sizes.size), "latest_record_bytes": {
                "mean": round(float(sizes.mean()), 1), "p50": int(np.percentile(sizes, 50)),
                "p99": int(np.percentile(sizes, 99)), "max": int(sizes.max())},
            "records_written": records, "bytes_written": written,
            "caps": {"history_tail": settings.history_tail, "seen_cap": settings.seen_cap}}


def owned_user(dead: WorkerProcess, settings: Settings) -> str:
    """A user whose interactions partition the worker about to die holds."""
    partitions = {int(tp.rsplit("/", 1)[1]) for tp in dead.get("/health")["assigned"]
                  if tp.rsplit("/", 1)[0] == settings.topic_interactions}
    for message in read_all(settings.bootstrap_servers, settings.topic_interactions, timeout=60, idle=2):
        if message.partition() in partitions and message.key():
            return message.key().decode()
    raise RuntimeError(f"no user in partitions {sorted(partitions)}")


def takeover(info, tmp: Path, standby: int, events: list[dict], session_timeout: float) -> dict:
    procs, settings = group(info, tmp, f"to{standby}", 2, standby_replicas=standby, session_timeout=session_timeout)
    try:
        rp.replay(info.bootstrap, settings.topic_interactions, events, backfill=False, progress=False)
        wait_until(lambda: total(procs, "events_applied_total") >= len(events), timeout=1800, interval=0.2,
                   message="all applied")
        time.sleep(3)  # standbys catch up with the changelog
        dead, survivor = procs[1], procs[0]
        user = owned_user(dead, settings)
        seen = {json.loads(m.value())["generated_at"] for m in
                read_all(info.bootstrap, settings.topic_recommendations, timeout=30, idle=2)
                if json.loads(m.value())["user_id"] == user}
        killed = time.perf_counter()
        dead.kill9()
        with InteractionProducer(info.bootstrap, settings.topic_interactions) as producer:
            producer.interaction(user, "50", "view", datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))

        def served():
            for m in read_all(info.bootstrap, settings.topic_recommendations, timeout=5, idle=0.5):
                rec = json.loads(m.value())
                if rec["user_id"] == user and rec["generated_at"] not in seen:
                    return True
            return False

        wait_until(served, timeout=600, interval=0.2, message="a list from the survivor")
        return {"standby_replicas": standby, "session_timeout_s": session_timeout, "user": user,
                "kill_to_first_list_s": round(time.perf_counter() - killed, 2),
                "survivor_events_applied": int(survivor.metric("events_applied_total"))}
    finally:
        for w in procs:
            w.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=100000)
    parser.add_argument("--rounds", type=int, default=3,
                        help="one worker, then two, this many times (the machine's speed drifts: medians)")
    parser.add_argument("--session-timeout", type=float, default=10.0)
    parser.add_argument("--rebalance-delay", type=float, default=10.0,
                        help="seconds an empty group waits for members before its first assignment")
    parser.add_argument("--out", default="bench/results/scale_out.json")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mmsr-bench-"))
    broker = LocalKafka(tmp / "kafka")
    info = broker.start(port=0, initial_rebalance_delay_ms=int(args.rebalance_delay * 1000))
    try:
        events = rp.movielens_events()[: args.events]
        rounds = []
        for n in range(args.rounds):
            one = throughput(info, tmp, 1, events, f"tp1r{n}")
            two = throughput(info, tmp, 2, events, f"tp2r{n}")
            rounds.append({"one_worker": one, "two_workers": two,
                           "ratio": round(two["applied_and_folded_per_s"] / one["applied_and_folded_per_s"], 3)})
            print(f"round {n}: ratio {rounds[-1]['ratio']}", flush=True)
        one_median = statistics.median(r["one_worker"]["applied_and_folded_per_s"] for r in rounds)
        two_median = statistics.median(r["two_workers"]["applied_and_folded_per_s"] for r in rounds)
        takeovers = [takeover(info, tmp, standby, events, args.session_timeout) for standby in (0, 1)]
        result = {
            "benchmark": "scale_out",
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "kafka": info.version,
                        "note": "broker, workers and producer share these cores"},
            "initial_rebalance_delay_s": args.rebalance_delay,
            "one_worker_applied_and_folded_per_s_median": one_median,
            "two_workers_applied_and_folded_per_s_median": two_median,
            "ratio_two_to_one": round(two_median / one_median, 3),
            "ratio_per_round": [r["ratio"] for r in rounds],
            "rounds": rounds,
            "takeover": takeovers,
        }
        write_result(args.out, result)
    finally:
        broker.stop()


if __name__ == "__main__":
    main()
