"""Is the shipped blend at its optimum? RRF's k0 and the blend weights, chosen on validation, read on test;
and what EASE adds: the best blend without it (EASE weight 0) is chosen on validation too.

The lists are the offline prequential replay of the stream's own sources (``models.evaluation.prequential``,
the code ``mmsr eval-stream --fit-weights`` fits with): the validation window is the last 10% of
the backfill (SASRec and EASE trained on the events before it), the test window the last 10% of all events
(trained on the whole backfill), as in eval-stream. For each k0 of ``MMSR_RRF_K`` the
weights are chosen by validation HR@10 over a grid around the shipped ones; the test figures are
only read, never chosen on.
"""
from __future__ import annotations

import argparse
import itertools
import os
import platform
import time
from pathlib import Path

from bench import write_result

K0_GRID = (15, 30, 60, 120)
SEQUENTIAL_GRID = (0.6, 0.8, 1.0, 1.3)
EASE_GRID = (0.0, 0.4, 0.6, 0.8, 1.0)
TRENDING_GRID = (0.05, 0.2)
CONTENT_GRID = (0.02,)


def main() -> None:
    from models.data import movielens
    from models.evaluation.prequential import score_blend, time_split
    from streams.harness.eval_stream import StreamEvalConfig, offline_lists, train_sequential
    from streams.settings import Settings

    parser = argparse.ArgumentParser()
    parser.add_argument("--work", default="models-trained/blend-grid", help="the two retrieval models' folder "
                        "(SASRec and EASE; kept: a second run reuses them)")
    parser.add_argument("--out", default="bench/results/blend_grid.json")
    args = parser.parse_args()
    started = time.time()
    settings, config = Settings(), StreamEvalConfig()
    events, items = movielens.interactions(), list(movielens.items())
    split = time_split(events, config.test_fraction)
    backfill = events[:split]
    start = time_split(backfill, config.validation_fraction)
    work = Path(args.work)
    windows = {"validation": (backfill, start, split, backfill[:start], work / "sequential-validation"),
               "test": (events, split, len(events), backfill, work / "sequential")}
    lists = {}
    for name, (stream, first, end, training, model_dir) in windows.items():
        if not (model_dir / "config.json").exists():
            train_sequential(training, model_dir, config, print)
        lists[name] = offline_lists(items, stream, first, end, settings.cooccurrence_config(), model_dir)

    def scores(name: str, weights: dict, k0: float) -> dict:
        result = score_blend(*lists[name], weights, 10, k0)
        return {key: round(result[key], 4) for key in ("HR@10", "NDCG@10", "MRR@10")}

    def key(row: dict) -> tuple:
        return row["validation"]["HR@10"], row["validation"]["NDCG@10"]

    shipped = settings.blend_weights()
    rows, without_ease = [], []
    for k0 in K0_GRID:
        tried = []
        for sequential, ease, trending, content in itertools.product(SEQUENTIAL_GRID, EASE_GRID, TRENDING_GRID,
                                                                     CONTENT_GRID):
            weights = {"cooccurrence": 1.0, "sequential": sequential, "ease": ease, "trending": trending,
                       "content": content}
            tried.append({"rrf_k": k0, "chosen_weights": weights, "validation": scores("validation", weights, k0)})
        for chosen, out in ((max(tried, key=key), rows), (max((t for t in tried if not t["chosen_weights"]["ease"]),
                                                              key=key), without_ease)):
            out.append({**chosen, "test": scores("test", chosen["chosen_weights"], k0)})
        rows[-1].update(shipped_weights_validation=scores("validation", shipped, k0),
                        shipped_weights_test=scores("test", shipped, k0))
        print(rows[-1], flush=True)
    chosen = max(rows, key=key)
    write_result(args.out, {
        "benchmark": "blend_grid", "events": {"validation": len(lists["validation"][1]), "test": len(lists["test"][1])},
        "shipped": {"rrf_k": settings.rrf_k, "weights": shipped,
                    "validation": scores("validation", shipped, settings.rrf_k),
                    "test": scores("test", shipped, settings.rrf_k)},
        "chosen_on_validation": {name: chosen[name] for name in ("rrf_k", "chosen_weights", "validation", "test")},
        "chosen_on_validation_without_ease": max(without_ease, key=key),
        "rows": rows,
        "grid": {"rrf_k": K0_GRID, "sequential": SEQUENTIAL_GRID, "ease": EASE_GRID, "trending": TRENDING_GRID,
                 "content": CONTENT_GRID, "cooccurrence": 1.0},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "seconds": round(time.time() - started, 1)})


if __name__ == "__main__":
    main()
