"""Where a worker's ingest time goes: py-spy samples the worker while it applies a replay.

One worker (summaries off, co-occurrence on as configured) on a local broker, measured as
``bench.ingest`` measures it (a backlog produced while the worker is stopped); the samples run
from its restart until the item-keyed increments are folded, so they cover ingest alone. The summary
attributes each sample's innermost project or library frame to a stage and reports shares of
the worker's samples; the raw collapsed stacks are written beside the JSON.

py-spy is a profiling tool, not a dependency: ``pip install py-spy`` to run this.
"""
from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.ingest import ingest
from streams import replay as rp
from streams.kafka.launcher import LocalKafka
from bench import write_result

# first match wins, tested against each frame of a stack from the innermost outwards
STAGES = [
    ("validation (schemas)", ("schemas/__init__.py", "jsonschema/", "fastjsonschema")),
    ("json decode/encode", ("json/decoder.py", "json/encoder.py", "json/__init__.py", "orjson")),
    ("table reads/writes (faust tables, rocksdb)", ("faust/tables/", "faust/stores/", "rocksdict")),
    ("state rules (streams/state.py)", ("streams/state.py",)),
    # py-spy names the stages' files without their folder ("neighbours.py:61"): matched with the "("
    ("co-occurrence increments", ("models/candidates/cooccurrence.py", "stages/neighbours.py", "(neighbours.py:")),
    ("publishing (faust topics, producer)", ("faust/topics.py", "faust/transport/producer", "aiokafka/producer",
                                            "faust/channels.py", "faust/transport/drivers/aiokafka.py:send")),
    ("metrics", ("streams/metrics.py", "prometheus_client")),
    ("interactions stage (own code)", ("stages/interactions.py", "(interactions.py:")),
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
    parser.add_argument("--events", type=int, default=100000)
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
    collapsed = Path(args.out).with_suffix(".collapsed.txt")
    collapsed.parent.mkdir(parents=True, exist_ok=True)
    spies = []

    def attach(worker):
        spies.append(subprocess.Popen([spy_bin, "record", "--pid", str(worker.proc.pid), "--format", "raw", "--rate",
                                       "200", "--output", str(collapsed), "--nonblocking"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(1.0)

    worker = None
    try:
        events = rp.movielens_events()[: args.events]
        figures, worker, _ = ingest(info, tmp, "profile", events, on_restart=attach, cooccurrence=args.cooccurrence)
        spies[0].send_signal(2)
        spies[0].wait(timeout=60)
        result = {"benchmark": "ingest_profile", "events": len(events), "cooccurrence": args.cooccurrence,
                  "applied_per_s": figures["worker_applied_per_s"],
                  "applied_and_folded_per_s": figures["worker_applied_and_folded_per_s"], **summarise(collapsed)}
        write_result(args.out, result)
    finally:
        if worker is not None:
            worker.stop()
        broker.stop()


if __name__ == "__main__":
    main()
