"""The event loop's longest stall while the worker's whole-catalog work runs.

A Faust worker's heartbeats, fetches and timers share one asyncio loop; work that holds it for
seconds gets the worker thrown out of its group. This measures, with a ticker task that records
the largest gap between its 5 ms ticks, three pieces of whole-catalog work as the worker runs them
now (``streams.services``: in an executor thread) against the same work run on the loop, as the
worker at df091ed did, in the same process:

- a catalog index rebuild from 100,000 item profiles read from RocksDB (rocksdict, JSON values as
  Faust stores them, 384-d embeddings);
- a popularity ranking of 1,000,000 item counts (then: a full sort on the loop; now: the top 20,000
  selected in numpy, in a thread);
- the candidate stage for 64 users over the 100,000-item catalog (then: the similarity matrix
  product alone, on the loop; now: co-occurrence over 200 neighbours of each of 20 recent items,
  content similarity and trending, blended, in a thread).

Writes bench/results/event_loop.json.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import platform
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from models.candidates.retrieval import Popularity, user_vector
from streams.events import encode_vector
from streams.metrics import Metrics
from streams.catalog import Catalog
from streams.services import Services
from streams.settings import Settings
from streams.stages.recommendations import RecommendationsStage
from streams.state import UserState


async def longest_stall(work, tick: float = 0.005) -> tuple[float, float]:
    """(longest gap between ticks beyond the tick itself, seconds of work) while ``work()`` runs."""
    worst, running = 0.0, True

    async def ticker():
        nonlocal worst
        last = time.perf_counter()
        while running:
            await asyncio.sleep(tick)
            now = time.perf_counter()
            worst = max(worst, now - last - tick)
            last = now

    task = asyncio.ensure_future(ticker())
    await asyncio.sleep(0.05)
    started = time.perf_counter()
    await work()
    seconds = time.perf_counter() - started
    running = False
    await task
    return worst, seconds


def fill_rocksdb(path: Path, n: int, dim: int) -> None:
    from rocksdict import Rdict

    rng = np.random.default_rng(0)
    db = Rdict(str(path))
    for start in range(0, n, 10_000):
        vectors = rng.normal(size=(min(10_000, n - start), dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        for i, vec in enumerate(vectors, start):
            db[json.dumps(f"i{i}").encode()] = json.dumps({"item_id": f"i{i}", "title": f"Item {i}",
                                                           "embedding": encode_vector(vec)}).encode()
    db.close()


def profiles_from(path: Path):
    from rocksdict import AccessType, Rdict

    def read():
        db = Rdict(str(path), access_type=AccessType.read_only())
        try:
            for key, value in db.items():
                yield json.loads(key), json.loads(value)
        finally:
            db.close()
    return read


async def measure(args) -> dict:
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "item-profiles"
        fill_rocksdb(db, args.items, args.dim)
        profiles = profiles_from(db)

        async def rebuild_on_loop():
            Catalog.build(args.dim, profiles())

        catalog = Catalog(Metrics())

        async def rebuild_off_loop():
            await catalog.rebuild(args.dim, profiles)

        results["index_rebuild"] = await compare(rebuild_on_loop, rebuild_off_loop)
        assert len(catalog) == args.items

        popularity = Popularity(auto_rank=False)
        rng = np.random.default_rng(1)
        for i, c in enumerate(rng.zipf(1.3, size=args.counts)):
            popularity.counts[f"i{i}"] = int(c)

        async def rank_on_loop():  # df091ed: a full sort of every count, on the loop
            sorted(popularity.counts.items(), key=lambda kv: (-kv[1], kv[0]))

        async def rank_off_loop():
            await asyncio.get_running_loop().run_in_executor(None, popularity.rank)

        results["popularity_rank"] = await compare(rank_on_loop, rank_off_loop)

        histories = [[f"i{j}" for j in rng.integers(0, args.items, 20)] for _ in range(args.users)]
        stage = candidate_stage(catalog, histories, args.items, rng)
        states = [UserState(f"u{n}", history=[{"item_id": i} for i in h], seen=h) for n, h in enumerate(histories)]

        async def retrieve_on_loop():  # df091ed: the similarity matrix product, on the loop
            for h in histories:
                catalog.index.top_k(user_vector(catalog.index, h, 10.0), 50, exclude=h)

        async def retrieve_off_loop():
            await asyncio.get_running_loop().run_in_executor(None, stage.candidates, states, 50)

        results["candidates_64_users"] = await compare(retrieve_on_loop, retrieve_off_loop)
    return results


def candidate_stage(catalog: Catalog, histories: list[list[str]], n_items: int, rng) -> RecommendationsStage:
    """The stream's candidate stage over this catalog, with a co-occurrence record of 200
    neighbours for every item the users' histories hold (all the stage reads)."""
    services = Services(Settings(summary_model="none", caption_model="none"), {}, {}, None, Metrics(),
                        SimpleNamespace(sequential=None, reranker=None))
    services.catalog = catalog
    for item in {i for h in histories for i in h}:
        others = rng.integers(0, n_items, 200)
        services.neighbours[item] = {"count": 50, "neighbours": {f"i{j}": float(w) for j, w in
                                                                 zip(others, rng.integers(1, 9, 200))}}
    for n in range(n_items):
        services.item_stats.counts[f"i{n}"] = 50
        services.item_stats.trending.set(f"i{n}", float(n % 997))
    services.item_stats.trending.rank()
    return RecommendationsStage(services)


async def compare(on_loop, off_loop) -> dict:
    before, before_s = await longest_stall(on_loop)
    after, after_s = await longest_stall(off_loop)
    return {"on_loop_max_stall_ms": round(before * 1000, 2), "on_loop_work_s": round(before_s, 3),
            "off_loop_max_stall_ms": round(after * 1000, 2), "off_loop_work_s": round(after_s, 3),
            "stall_ratio_on_over_off": round(before / max(after, 1e-6), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--counts", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("bench/results/event_loop.json"))
    args = parser.parse_args()
    results = asyncio.run(measure(args))
    report = {"benchmark": "event_loop", "items": args.items, "dim": args.dim, "popularity_counts": args.counts,
              "target_max_stall_ms": 100, "machine": {"cpu_count": __import__("os").cpu_count(),
                                                       "platform": platform.platform()},
              "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
