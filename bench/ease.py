"""What EASE costs as the catalog grows: fitting time, the weights' size, and serving a batch of
users, against the sequential source (SASRec at the shipped shape, random weights) serving the
same users over the same catalog in the same run.

The log is synthetic (Zipf item popularity, 50 distinct items per user), since its shape, not its
content, sets the cost: X'X is summed over each user's item pairs and the inverse is items cubed.
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import time

import numpy as np

from bench import write_result


def synthetic_log(items: int, users: int, per_user: int, seed: int = 0) -> dict[str, list[str]]:
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, items + 1) ** 0.8
    weights /= weights.sum()
    return {f"u{u}": [f"i{j}" for j in rng.choice(items, size=per_user, replace=False, p=weights)]
            for u in range(users)}


def serving_seconds(source, histories: list[list[str]], repeats: int) -> float:
    """Seconds per user of one top-100 call for the batch (the best of ``repeats``)."""
    exclude = [set(h) for h in histories]
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        source.top_k(histories, 100, exclude)
        best = min(best, time.perf_counter() - started)
    return best / len(histories)


def main() -> None:
    import torch

    from models.candidates.sasrec import SASRec
    from models.config import EaseConfig, SequentialSourceConfig
    from models.candidates.ease import Ease
    from models.candidates.sequential import SequentialRetriever

    parser = argparse.ArgumentParser()
    parser.add_argument("--items", default="1682,5000,10000", help="catalog sizes, comma-separated")
    parser.add_argument("--users", type=int, default=20000)
    parser.add_argument("--per-user", type=int, default=50)
    parser.add_argument("--batch", type=int, default=64, help="users per serving call")
    parser.add_argument("--out", default="bench/results/ease.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    for items in (int(n) for n in args.items.split(",")):
        log = synthetic_log(items, args.users, args.per_user)
        started = time.perf_counter()
        ease = Ease.fit(log, EaseConfig())
        fit_seconds = time.perf_counter() - started
        histories = list(log.values())[:args.batch]
        config = SequentialSourceConfig()
        sasrec = SequentialRetriever(SASRec(len(ease.vocabulary), config), ease.vocabulary, {"version": "random"})
        ease_s, sasrec_s = serving_seconds(ease, histories, 5), serving_seconds(sasrec, histories, 5)
        rows.append({"items": items, "users": args.users, "pairs": sum(len(h) ** 2 for h in log.values()),
                     "fit_seconds": round(fit_seconds, 3), "weights_mb": round(ease.weights.numel() * 4 / 2 ** 20, 1),
                     "max_rss_mb_so_far": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                     "serve_ms_per_user": {"ease": round(ease_s * 1000, 3), "sasrec": round(sasrec_s * 1000, 3)},
                     "serve_ratio_ease_over_sasrec": round(ease_s / sasrec_s, 3)})
        print(rows[-1], flush=True)
    write_result(args.out, {"benchmark": "ease", "rows": rows, "per_user_items": args.per_user,
                            "batch_users": args.batch, "torch_threads": torch.get_num_threads(),
                            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()}})


if __name__ == "__main__":
    main()
