"""The re-ranker in the loop: `mmsr eval-stream`'s re-ranked lists against the candidate stage's order of them.

Issue 11 asks whether re-ranked lists are at least as good on HR@10 as the candidate stage's own.
SmolLM2 on a CPU summarizes about one user block per second, and the full MovieLens-100K backfill
owes some 30,000 summaries, so the comparison runs on a subset, chosen so that every scored event
belongs to a user the model has summarized:

- the split is MovieLens-100K's own (the last 10% of events by time, as `mmsr eval-stream`);
- ``--users`` users are sampled (``--seed``) from those with at least one summary block before the
  split and an event after it;
- each keeps their last ``--backfill-per-user`` events before the split and their first
  ``--test-per-user`` after it; nobody else's events are replayed (the candidate stage's
  co-occurrence and popularity are learned from these users only).

The SASRec the stream serves and the adapter (``mmsr train --sequential-model --fused``, the
default preset) are trained on every MovieLens-100K event before the split, so neither has seen
the test window. The files are replayed through a fresh broker and worker with that SASRec and
the re-ranker (SmolLM2 captions, summaries and scoring of the candidate stage's top
``--rerank-candidates``, written with the adapter's protocol lengths). Each re-ranked list carries
the candidate stage's own top 10 of the same candidates (``rerank.candidate_top``), so both
orders are scored on the same lists, at the same moments; the HR@10 difference gets a 95%
bootstrap interval over users.

    python -m bench.rerank_stream --out bench/results/rerank_stream
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

import schemas
from models.evaluation.prequential import time_split


def subset(users: int, seed: int, backfill_per_user: int, test_per_user: int, test_fraction: float = 0.1):
    """The sampled users' events around MovieLens-100K's time split, the split time and the items."""
    from models.data import movielens
    from streams.replay import window

    events = window([schemas.validate("interaction", e) for e in movielens.interactions()], None, None)
    split = time_split(events, test_fraction)
    before = Counter(e["user_id"] for e in events[:split])
    after = Counter(e["user_id"] for e in events[split:])
    eligible = sorted(u for u in after if before[u] >= 3)
    chosen = set(random.Random(seed).sample(eligible, min(users, len(eligible))))
    backfill = [e for e in events[:split] if e["user_id"] in chosen]
    test = [e for e in events[split:] if e["user_id"] in chosen]
    kept_backfill = keep_per_user(backfill[::-1], backfill_per_user)[::-1]  # each user's last events before the split
    kept_test = keep_per_user(test, test_per_user)  # and their first after it
    n_test = len(kept_test)
    chosen_events = kept_backfill + kept_test
    return list(movielens.items()), chosen_events, events[split]["event_time"], n_test


def keep_per_user(events: list[dict], n: int) -> list[dict]:
    """The first ``n`` events of each user, in the given order."""
    seen: Counter = Counter()
    kept = []
    for e in events:
        seen[e["user_id"]] += 1
        if seen[e["user_id"]] <= n:
            kept.append(e)
    return kept


def mmsr(*args: str, log) -> None:
    command = [sys.executable, "-m", "streams.cli", *args]
    log("$ mmsr " + " ".join(args))
    subprocess.run(command, check=True)


def paired(rows: list[dict], k: int, resamples: int = 2000, seed: int = 0) -> dict:
    """HR@k of the candidate stage's order and the re-ranked order of the same lists, and the
    difference, with a bootstrap over users (``rows``: eval-stream's scored events)."""
    hit = lambda rank: 1 <= (rank or 0) <= k  # noqa: E731  (rank 0: not in the top k)
    by_user: dict[str, list[tuple[bool, bool]]] = {}
    for row in rows:
        by_user.setdefault(row["user_id"], []).append((hit(row["candidate_stage_rank"]), hit(row["stream_rank"])))
    users = sorted(by_user)
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(resamples):
        rows = [r for u in rng.choice(users, size=len(users)) for r in by_user[u]]
        diffs.append(np.mean([b for _, b in rows]) - np.mean([a for a, _ in rows]))
    rows = [r for u in users for r in by_user[u]]
    return {"events": len(rows), "users": len(users), f"candidates_HR@{k}": float(np.mean([a for a, _ in rows])),
            f"reranked_HR@{k}": float(np.mean([b for _, b in rows])),
            "difference": float(np.mean([b - a for a, b in rows])),
            "difference_95": [float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))],
            "reranked_better_events": sum(1 for a, b in rows if b and not a),
            "candidates_better_events": sum(1 for a, b in rows if a and not b)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/rerank_stream"))
    parser.add_argument("--users", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backfill-per-user", type=int, default=30)
    parser.add_argument("--test-per-user", type=int, default=10)
    parser.add_argument("--rerank-candidates", type=int, default=20)
    parser.add_argument("--llm", default="smollm2-135m-instruct", help="captions, scores and carries the LoRA")
    parser.add_argument("--summary-model", default=None,
                        help="writes the recurrent summaries (the adapter's protocol records it and the worker "
                             "serves it) [default: the worker's MMSR_SUMMARY_MODEL default]")
    parser.add_argument("--sasrec-epochs", type=int, default=100)
    args = parser.parse_args()
    from streams.harness.eval_stream import StreamEvalConfig, run
    from streams.settings import Settings

    summary_model = args.summary_model or Settings().summary_model

    out = args.out.resolve()
    work = out / "work"  # scratch: SASRec, adapter run, data files, the broker and worker
    work.mkdir(parents=True, exist_ok=True)
    log = lambda message: print(message, flush=True)  # noqa: E731
    items, events, split_time, n_test = subset(args.users, args.seed, args.backfill_per_user, args.test_per_user)
    write = lambda path, rows: path.write_text("".join(json.dumps(r) + "\n" for r in rows))  # noqa: E731
    write(work / "items.jsonl", items)
    write(work / "interactions.jsonl", events)
    log(f"subset: {len(events)} events of {args.users} users, {n_test} after the split at {split_time}")
    timings = {}
    t0 = time.time()
    sequential = work / "sequential"
    if not (sequential / "mmsr-retrieval.json").exists():
        mmsr("train-retrieval", "--out", str(sequential), "--until", split_time, "--epochs", str(args.sasrec_epochs),
             log=log)
    timings["train_sequential"] = time.time() - t0
    t0 = time.time()
    adapter_run = work / "adapter-run"
    if not (adapter_run / "adapter").exists():
        mmsr("train", "--out", str(adapter_run), "--sequential-model", str(sequential), "--fused", "--until",
             split_time, "--model", args.llm,
             "--summary-model", summary_model, log=log)
    timings["train_adapter"] = time.time() - t0
    worker = {"rerank_candidates": args.rerank_candidates, "torch_threads": 2}
    t0 = time.time()
    config = StreamEvalConfig(test_fraction=n_test / len(events), sequential_model=str(sequential),
                              reranker=str(adapter_run / "adapter"), llm=args.llm, wait_seconds=600.0)
    result = run(config, work / "reranked", items, events, worker_settings=dict(worker), log=log)
    timings["eval_stream"] = time.time() - t0
    rows = [json.loads(line) for line in (work / "reranked" / "events.jsonl").read_text().splitlines()]
    adapter = adapter_run / "adapter"
    read = lambda name: json.loads((adapter / name).read_text()) if (adapter / name).exists() else None  # noqa: E731
    report = {
        "benchmark": "eval-stream with the re-ranker: its lists against the candidate stage's order of the same lists (issue 11)",
        "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version()},
        "subset": {"users": args.users, "seed": args.seed, "backfill_per_user": args.backfill_per_user,
                   "test_per_user": args.test_per_user, "events": len(events), "test_events": n_test,
                   "split_time": split_time},
        "rerank_candidates": args.rerank_candidates, "llm": args.llm, "summary_model": summary_model,
        "worker_settings": worker,
        "adapter_version": (read("mmsr-adapter.json") or {}).get("version"), "fusion": read("mmsr-fusion.json"),
        "eval_stream": {k: result[k] for k in ("stream", "candidate_stage", "popularity", "events_scored",
                                               "events_without_list", "list_timeouts", "strategies",
                                               "sources_in_scored_lists", "worker_settings", "worker_counters",
                                               "seconds")},
        "paired": paired(rows, 10),
        "seconds": {k: round(v, 1) for k, v in timings.items()},
    }
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["paired"], indent=2))


if __name__ == "__main__":
    main()
