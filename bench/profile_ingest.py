"""Where a worker's ingest time goes: py-spy samples the worker while it applies a replay.

One worker (summaries off, co-occurrence on as configured) on a local broker; the replay is
produced first and the worker started on it, so the samples cover ingest alone. The summary
attributes each sample's innermost project or library frame to a stage and reports shares of
the worker's samples; the raw collapsed stacks are written beside the JSON.

py-spy is a profiling tool, not a dependency: ``pip install py-spy`` to run this.
"""
from __future__ import annotations

import argparse
import collections
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from streams import replay as rp
from streams.harness.process import WorkerProcess, wait_until
from streams.kafka.admin import create_topics
from streams.kafka.launcher import LocalKafka, free_port
from streams.settings import Settings, prefixed_topics

# first match wins, tested against each frame of a stack from the innermost outwards
STAGES = [
    ("validation (schemas)", ("schemas/__init__.py", "jsonschema/", "fastjsonschema")),
    ("json decode/encode", ("json/decoder.py", "json/encoder.py", "json/__init__.py", "orjson")),
    ("table reads/writes (faust tables, rocksdb)", ("faust/tables/", "faust/stores/", "rocksdict")),
    ("state rules (streams/state.py)", ("streams/state.py",)),
    ("co-occurrence increments", ("models/cooccurrence.py", "stages/neighbours.py")),
    ("publishing (faust topics, producer)", ("faust/topics.py", "faust/transport/producer", "aiokafka/producer",
                                            "faust/channels.py", "faust/transport/drivers/aiokafka.py:send")),
    ("metrics", ("streams/metrics.py", "prometheus_client")),
    ("interactions stage (own code)", ("stages/interactions.py",)),
    ("faust streams and agents", ("faust/streams.py", "faust/agents/", "faust/transport/consumer.py",
                                  "faust/transport/conductor.py", "mode/")),
    ("kafka client (aiokafka fetch, protocol)", ("aiokafka/",)),
    ("event loop, threads", ("asyncio/", "threading.py", "concurrent/")),
]


def stage_of(stack: list[str]) -> str:
    for frame in reversed(stack):
        for stage, needles in STAGES:
            if any(n in frame for n in needles):
                return stage
    return "other"


def summarise(collapsed: Path) -> dict:
    by_stage: collections.Counter = collections.Counter()
    by_function: collections.Counter = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack_text, _, count = line.rpartition(" ")
        stack, n = stack_text.split(";"), int(count)
        total += n
        by_stage[stage_of(stack)] += n
        by_function[stack[-1]] += n
    return {"samples": total,
            "share_by_stage": {k: round(v / total, 3) for k, v in by_stage.most_common()},
            "top_self_frames": [{"frame": k, "share": round(v / total, 3)} for k, v in by_function.most_common(15)]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=40000)
    parser.add_argument("--cooccurrence", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--out", default="bench/results/ingest_profile/latest.json")
    args = parser.parse_args()
    spy_bin = Path(sys.executable).with_name("py-spy")
    spy_bin = str(spy_bin) if spy_bin.exists() else shutil.which("py-spy")
    if spy_bin is None:
        raise SystemExit("py-spy is needed: pip install py-spy")
    tmp = Path(tempfile.mkdtemp(prefix="mmsr-profile-"))
    broker = LocalKafka(tmp / "kafka")
    info = broker.start(port=0)
    worker = None
    try:
        port = free_port()
        settings = Settings(bootstrap_servers=info.bootstrap, data_dir=str(tmp / "w"), web_port=port, app_id="profile",
                            summary_model="none", caption_model="none", cooccurrence=args.cooccurrence,
                            **prefixed_topics("profile"))
        create_topics(settings)
        worker = WorkerProcess(settings.to_env(), port, tmp / "worker.log").start(timeout=600)
        catalog = rp.publish_movielens_items(info.bootstrap, settings.topic_items, progress=False)
        wait_until(lambda: worker.metric("catalog_items") >= catalog, timeout=900, interval=1.0, message="catalog")
        events = rp.movielens_events()[: args.events]
        collapsed = Path(args.out).with_suffix(".collapsed.txt")
        collapsed.parent.mkdir(parents=True, exist_ok=True)
        spy = subprocess.Popen([spy_bin, "record", "--pid", str(worker.proc.pid), "--format", "raw", "--rate", "200",
                                "--output", str(collapsed), "--nonblocking"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        time.sleep(1.0)
        start = time.perf_counter()
        rp.replay(info.bootstrap, settings.topic_interactions, events, backfill=False, progress=False)
        wait_until(lambda: worker.metric("events_applied_total") >= len(events), timeout=1800, interval=0.2,
                   message="all applied")
        applied = time.perf_counter() - start
        spy.send_signal(2)
        spy.wait(timeout=60)
        result = {"benchmark": "ingest_profile", "events": len(events), "cooccurrence": args.cooccurrence,
                  "applied_per_s": round(len(events) / applied, 1), **summarise(collapsed)}
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
    finally:
        if worker is not None:
            worker.stop()
        broker.stop()


if __name__ == "__main__":
    main()
