"""Interaction -> refreshed recommendation latency with the LLM stages in the loop, real broker.

One worker with recurrent summaries (SmolLM2-135M, B = 3) and the re-ranker (SmolLM2-135M, the
given adapter or the base model, top N = 50 retrieval candidates re-ranked to k = 10). Users
first get a summary from a backfill (stale events: state and summaries, no lists). Then fresh
interactions arrive at a steady rate, round robin over the users, so every third one of a user
completes a block. Latency is measured by the worker from the interaction's broker timestamp to
the list's emission, reported per path:

- ``summary``: the interaction completed a block: summarize, then re-rank with the new summary;
- ``interaction``: re-rank with the stored summary (after the debounce window).

In the same run, the same fresh interactions go to a second worker without the re-ranker
(retrieval lists, summaries still on) as the baseline.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from models.data import movielens
from streams import replay as rp
from streams.kafka.admin import create_topics
from streams.kafka.client import InteractionProducer, read_all
from streams.kafka.launcher import LocalKafka, free_port
from streams.harness.process import WorkerProcess, wait_until
from streams.settings import Settings
from bench import write_result


def stamp(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def run_worker(info, tmp: Path, name: str, users: list[str], sequences: dict, args, rerank: bool) -> dict:
    port = free_port()
    values = {"bootstrap_servers": info.bootstrap, "data_dir": str(tmp / name), "web_port": port, "app_id": name,
              "topic_items": f"{name}-items", "topic_interactions": f"{name}-interactions",
              "topic_user_summaries": f"{name}-user-summaries", "topic_recommendations": f"{name}-recommendations",
              "topic_dead_letters": f"{name}-dead-letters", "debounce_seconds": args.debounce,
              "summary_model": "smollm2-135m-instruct", "summary_max_new_tokens": args.summary_tokens,
              "caption_model": "none", "recommender_model": "smollm2-135m-instruct" if rerank else "none",
              "recommender_adapter": args.adapter or "", "rerank_candidates": args.candidates, "top_k": 10}
    settings = Settings(**values)
    create_topics(settings)
    worker = WorkerProcess(settings.to_env(), port, tmp / f"{name}.log")
    try:
        worker.start(timeout=600)
        catalog = rp.publish_movielens_items(info.bootstrap, settings.topic_items, progress=False)
        wait_until(lambda: worker.metric("catalog_items") >= catalog, timeout=900, interval=1.0, message="catalog")
        old = datetime.now(timezone.utc) - timedelta(days=30)
        with InteractionProducer(info.bootstrap, settings.topic_interactions) as producer:
            for u in users:  # backfill: one summarized block per user, no lists
                for item in sequences[u][:args.block]:
                    producer.interaction(u, item, "view", stamp(old))
        wait_until(lambda: worker.metric("summaries_total") >= len(users), timeout=900, interval=1.0,
                   message="backfill summaries")
        producer = InteractionProducer(info.bootstrap, settings.topic_interactions)
        t0 = time.perf_counter()
        fresh = [(u, sequences[u][args.block + j]) for j in range(args.block) for u in users]
        for i, (u, item) in enumerate(fresh):
            producer.interaction(u, item, "view", stamp(datetime.now(timezone.utc)))
            producer._producer.flush()
            delay = (i + 1) / args.rate - (time.perf_counter() - t0)
            if delay > 0:
                time.sleep(delay)
        producer.flush()
        wait_until(lambda: worker.metric("summaries_total") >= 2 * len(users), timeout=1800, interval=1.0,
                   message="fresh summaries")
        time.sleep(args.settle)
        recs = [json.loads(m.value()) for m in read_all(info.bootstrap, settings.topic_recommendations, timeout=30)]
        metrics = {k: worker.metric(k) for k in ("rerank_seconds_total", "reranked_candidates_total",
                                                 "summary_seconds_total", "rerank_failures_total")}
    finally:
        worker.stop()
    by_kind = {}
    for kind in ("summary", "interaction"):
        lat = np.array([r["latency_ms"] for r in recs if r["trigger"]["kind"] == kind and r["latency_ms"] is not None])
        if lat.size:
            by_kind[kind] = {"lists": int(lat.size), "p50_ms": round(float(np.percentile(lat, 50)), 1),
                             "p99_ms": round(float(np.percentile(lat, 99)), 1), "max_ms": round(float(lat.max()), 1)}
    everything = np.array([r["latency_ms"] for r in recs if r["latency_ms"] is not None
                           and r["trigger"]["kind"] in ("summary", "interaction")])
    return {"lists": len(recs), "strategies": sorted({r["strategy"] for r in recs}),
            "adapter_versions": sorted({r.get("adapter_version") for r in recs if r.get("adapter_version")}),
            "p50_ms": round(float(np.percentile(everything, 50)), 1) if everything.size else None,
            "p99_ms": round(float(np.percentile(everything, 99)), 1) if everything.size else None,
            "by_trigger": by_kind, "worker_metrics": metrics}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--rate", type=float, default=0.25, help="fresh interactions per second")
    parser.add_argument("--candidates", type=int, default=50)
    parser.add_argument("--block", type=int, default=3)
    parser.add_argument("--summary-tokens", type=int, default=48)
    parser.add_argument("--debounce", type=float, default=0.5)
    parser.add_argument("--settle", type=float, default=60.0, help="seconds to wait for the last lists")
    parser.add_argument("--adapter", default="", help="adapter directory (mmsr train); empty: the base model")
    parser.add_argument("--out", default="bench/results/rerank_latency.json")
    args = parser.parse_args()

    sequences: dict[str, list[str]] = {}
    for e in movielens.interactions():
        sequences.setdefault(e["user_id"], []).append(e["item_id"])
    users = sorted(sequences, key=int)[:args.users]
    tmp = Path(tempfile.mkdtemp(prefix="mmsr-bench-"))
    broker = LocalKafka(tmp / "kafka")
    info = broker.start(port=0)
    try:
        reranked = run_worker(info, tmp, "rerank", users, sequences, args, rerank=True)
        baseline = run_worker(info, tmp, "retrieval", users, sequences, args, rerank=False)
    finally:
        broker.stop()
    result = {
        "benchmark": "interaction -> recommendation latency with summaries and the LoRA re-ranker in the loop",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "kafka": info.version},
        "users": len(users), "rate_per_s": args.rate, "rerank_candidates": args.candidates, "top_k": 10,
        "summary_block": args.block, "summary_max_new_tokens": args.summary_tokens,
        "debounce_ms": args.debounce * 1000, "adapter": args.adapter or "base model",
        "reranker": reranked, "baseline_retrieval_only": baseline,
        "p50_ratio_reranker_to_retrieval": (round(reranked["p50_ms"] / baseline["p50_ms"], 2)
                                            if reranked["p50_ms"] and baseline["p50_ms"] else None),
    }
    write_result(args.out, result)


if __name__ == "__main__":
    main()
