"""What Faust costs per message before any stage runs: a bare agent that only counts, against
aiokafka's own consumer, on the same 100,000 records of a local broker.

Three consumers, each in its own process (Faust's changes are process-wide), alternated for
``--rounds`` so a drift in the machine's speed hits all:
- ``aiokafka``: AIOKafkaConsumer.getmany, the client under Faust;
- ``faust (defaults)``: an agent over ``take_events(500)`` with raw bytes, as Faust comes;
- ``faust (worker's tuning)``: the same agent with ``streams.kafka.patches`` applied and its
  schema and monitor, as the worker runs it.
Each is timed from its first record to its last, on uvloop as the worker runs.

    python -m bench.faust_floor --out bench/results/faust_floor.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import write_result

TOPIC = "floor"
VARIANTS = ("aiokafka", "faust (defaults)", "faust (worker's tuning)")


def produce(bootstrap: str, n: int) -> None:
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})  # kept: its futures fail once it is collected
    for future in admin.create_topics([NewTopic(TOPIC, 4, 1)]).values():
        future.result()
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    value = json.dumps({"user_id": "1", "item_id": "2", "type": "view", "event_time": "2026-01-01T00:00:00Z"}).encode()
    for i in range(n):
        producer.produce(TOPIC, value, key=str(i % 943).encode())
        producer.poll(0)
    producer.flush()


def consume_aiokafka(bootstrap: str, n: int) -> float:
    import asyncio

    from aiokafka import AIOKafkaConsumer

    async def run() -> float:
        consumer = AIOKafkaConsumer(TOPIC, bootstrap_servers=bootstrap, group_id=f"floor-{time.time()}",
                                    auto_offset_reset="earliest", enable_auto_commit=False,
                                    max_partition_fetch_bytes=8 * 1024 * 1024, max_poll_records=1000)
        await consumer.start()
        seen, started = 0, None
        try:
            while seen < n:
                batch = await consumer.getmany(timeout_ms=1000)
                if batch and started is None:
                    started = time.perf_counter()
                seen += sum(len(records) for records in batch.values())
        finally:
            await consumer.stop()
        return time.perf_counter() - started

    return asyncio.run(run())


def consume_faust(bootstrap: str, n: int, tuned: bool) -> None:
    """Runs a Faust worker until the agent has seen ``n`` records, then prints the seconds and exits."""
    import faust

    from streams.settings import Settings

    extra, schema = {}, faust.Schema(key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    if tuned:
        from streams.kafka import patches
        from streams.kafka.patches.throughput import QuietMonitor, RawBytes

        patches.apply(Settings())
        extra["monitor"], schema = QuietMonitor(), RawBytes()
    app = faust.App(f"floor-{time.time()}", broker=f"kafka://{bootstrap}", store="memory://",
                    datadir=tempfile.mkdtemp(prefix="floor-"), consumer_max_fetch_size=8 * 1024 * 1024,
                    broker_max_poll_records=1000, web_enabled=False, autodiscover=False,
                    consumer_auto_offset_reset="earliest", **extra)
    topic = app.topic(TOPIC, schema=schema)
    seen = {"n": 0, "started": None}

    @app.agent(topic)
    async def count(stream):
        async for events in stream.take_events(500, within=0.02):
            if seen["started"] is None:
                seen["started"] = time.perf_counter()
            seen["n"] += len(events)
            if seen["n"] >= n:
                print(f"SECONDS {time.perf_counter() - seen['started']}", flush=True)
                os._exit(0)

    import uvloop

    uvloop.install()
    sys.argv = [sys.argv[0], "worker", "--loglevel", "warn"]
    app.main()


def run_variant(variant: str, bootstrap: str, n: int) -> float:
    out = subprocess.run([sys.executable, "-m", "bench.faust_floor", "--consume", variant, "--bootstrap", bootstrap,
                          "--events", str(n)], capture_output=True, text=True, timeout=600)
    for line in out.stdout.splitlines() + out.stderr.splitlines():
        if "SECONDS " in line:
            return float(line.split("SECONDS ")[1].split()[0])
    raise RuntimeError(f"{variant} printed no time:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=100000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="bench/results/faust_floor.json")
    parser.add_argument("--consume", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--bootstrap", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.consume == "aiokafka":
        import uvloop

        uvloop.install()
        print(f"SECONDS {consume_aiokafka(args.bootstrap, args.events)}", flush=True)
        return
    if args.consume:
        consume_faust(args.bootstrap, args.events, tuned=args.consume == VARIANTS[2])
        return

    from streams.kafka.launcher import LocalKafka

    tmp = Path(tempfile.mkdtemp(prefix="mmsr-floor-"))
    broker = LocalKafka(tmp / "kafka")
    info = broker.start(port=0)
    try:
        produce(info.bootstrap, args.events)
        us: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for _ in range(args.rounds):
            for variant in VARIANTS:
                us[variant].append(round(run_variant(variant, info.bootstrap, args.events) / args.events * 1e6, 2))
        medians = {v: statistics.median(t) for v, t in us.items()}
        result = {
            "benchmark": "faust_floor: per-message cost of a bare consumer, before any stage",
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "kafka": info.version},
            "events": args.events, "rounds": args.rounds,
            "us_per_message": us, "median_us_per_message": medians,
            "messages_per_s_median": {v: round(1e6 / m) for v, m in medians.items()},
            "tuned_to_defaults_speedup": round(medians[VARIANTS[1]] / medians[VARIANTS[2]], 2),
        }
        write_result(args.out, result)
    finally:
        broker.stop()


if __name__ == "__main__":
    main()
