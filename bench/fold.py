"""The neighbours stage's fold alone, in one process: item-pairs messages of ML-100K parsed and
folded into item records, four ways on the same interactions:

- the weighted layout earlier workers sent ([[other, weight], ...], which ``fold_message`` still reads);
- the flat layout workers send now (``pairs_message``: [other, d-1] pairs weighed from the
  message's decay), folded and pruned by the Python references (``fold_pairs_python``,
  ``prune_by_weight``), as the worker did before this benchmark's last change;
- the flat layout folded and pruned by the compiled functions (``models/_cooccurrence.c``);
- the binary layout (``encode_pairs_message``: each id once per message) decoded, folded and
  pruned by the compiled functions, as the worker does where they were built.

The interactions are batched as the interactions stage batches them (500), their records go to
two item partitions (the default), and the fold takes 26 messages at a time (about what
``MMSR_INCREMENTS_WITHIN`` gathers from a backlog), pruning and storing each touched record once
per batch, as the stage does. All four must end in byte-identical records. The prune of the
records left at the end is timed apart, Python's sort against the compiled one, same result, and
so is what the interactions stage builds per interaction (``interaction_records``).

    python -m bench.fold --out bench/results/fold.json
"""
from __future__ import annotations

import argparse
import platform
import time

import orjson

import schemas
from models.candidates import cooccurrence
from models.candidates.cooccurrence import (CooccurrenceConfig, decay_powers, decode_message, encode_pairs_message, fold_message,
                                 fold_pairs_python, interaction_records, interaction_records_python, pair_window,
                                 pairs_message, prune, prune_by_weight)
from streams.replay import window
from bench import write_result


def messages_of(events: list[dict], config: CooccurrenceConfig, partitions: int = 2, batch: int = 500) -> list[dict]:
    """The item-pairs messages the interactions stage would send for ``events`` (source partition: user id mod 4)."""
    histories: dict[str, list[str]] = {}
    pairs = []
    for offset, e in enumerate(events):
        previous = histories.setdefault(e["user_id"], [])
        pairs.append((int(e["user_id"]) % 4, offset, schemas.parse_time(e["event_time"]).timestamp(), e["item_id"],
                      pair_window(previous, config)))
        previous.append(e["item_id"])
    out = []
    for start in range(0, len(pairs), batch):
        by_partition: dict[int, list] = {}
        for source, offset, ts, item, win in sorted(pairs[start:start + batch], key=lambda r: (r[0], r[1])):
            for partition, record in interaction_records(source, offset, ts, item, win, partitions)[0].items():
                by_partition.setdefault(partition, []).append(record)
        out += [pairs_message(records, config) for _, records in sorted(by_partition.items())]
    return out


def weighted(message: dict) -> dict:
    """The same message in the layout of earlier workers: a weight per pair."""
    powers = decay_powers(message["decay"], message["window"])
    flat = lambda pairs: [[o, powers[d]] for o, d in zip(pairs[0::2], pairs[1::2])]  # noqa: E731
    return {"interactions": [[s, o, t, i, None if own is None else flat(own), flat(others)]
                             for s, o, t, i, own, others in message["pairs"]]}


def fold_all(encoded: list[bytes], config: CooccurrenceConfig, per_batch: int = 26) -> tuple[dict, float, float]:
    """Records after folding every message; seconds for parse and fold, and for parsing alone."""
    store: dict = {}
    started = time.perf_counter()
    for start in range(0, len(encoded), per_batch):
        folding: dict = {}
        for raw in encoded[start:start + per_batch]:
            fold_message(folding, store.get, decode_message(raw), config)
        for item, (record, new, _) in folding.items():
            if new:
                store[item] = prune(record, config)
    total = time.perf_counter() - started
    started = time.perf_counter()
    for raw in encoded:
        decode_message(raw)
    return store, total, time.perf_counter() - started


def time_prunes(store: dict, config: CooccurrenceConfig, rounds: int) -> dict:
    """Both prunes on every record left at the end (cut to M / 2, so each one sorts)."""
    keep = config.neighbours // 2
    full = [dict(r["neighbours"]) for r in store.values() if len(r["neighbours"]) > keep * 1.2]
    out = {}
    for name, prune_with in (("Python sort by (-weight, id)", prune_by_weight),
                             ("compiled (now)", cooccurrence.prune_neighbours_compiled)):
        times, results = [], None
        for _ in range(rounds):
            started = time.perf_counter()
            results = [prune_with(n, keep) for n in full]
            times.append(round((time.perf_counter() - started) / len(full) * 1e6, 2))
        out[name] = {"us_per_record": times, "result": orjson.dumps(results)}
    identical = len({v.pop("result") for v in out.values()}) == 1
    return {"records": len(full), "mean_neighbours": round(sum(map(len, full)) / len(full), 1), "kept": keep,
            "variants": out, "identical": identical}


def time_records(events: list[dict], config: CooccurrenceConfig, rounds: int, partitions: int = 2) -> dict:
    """What the interactions stage builds per interaction (``interaction_records``), Python against
    compiled, on the same ML-100K windows; the records must be identical."""
    histories: dict[str, list[str]] = {}
    inputs = []
    for offset, e in enumerate(events):
        previous = histories.setdefault(e["user_id"], [])
        inputs.append((0, offset, 1.0, e["item_id"], pair_window(previous, config), partitions))
        previous.append(e["item_id"])
    out = {}
    for name, build in (("Python", interaction_records_python), ("compiled (now)", interaction_records)):
        times = []
        for _ in range(rounds):  # nothing kept while timed, as the stage sends and drops them
            started = time.perf_counter()
            for args in inputs:
                build(*args)
            times.append(round((time.perf_counter() - started) / len(inputs) * 1e6, 2))
        built = [build(*args) for args in inputs]
        out[name] = {"us_per_interaction": times, "result": orjson.dumps([[list(r.items()), n] for r, n in built])}
    identical = len({v.pop("result") for v in out.values()}) == 1
    return {"interactions": len(inputs), "variants": out, "identical": identical}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=100000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="bench/results/fold.json")
    args = parser.parse_args()
    from models.data import movielens

    config = CooccurrenceConfig()
    events = window([schemas.validate("interaction", e) for e in movielens.interactions()], None, None)[:args.events]
    flat = [orjson.dumps(m) for m in messages_of(events, config)]
    compiled = cooccurrence.fold_pairs, cooccurrence.prune_neighbours
    if compiled[0] is fold_pairs_python:
        raise SystemExit("the compiled fold is not built: run make setup (needs a C compiler)")
    python = fold_pairs_python, prune_by_weight
    binary = [encode_pairs_message(orjson.loads(m)["pairs"], config) for m in flat]
    variants = {"weighted layout, Python prune (before)": ([orjson.dumps(weighted(orjson.loads(m))) for m in flat], python),
                "flat layout, Python fold and prune": (flat, python),
                "flat layout, compiled fold and prune": (flat, compiled),
                "binary layout, compiled fold and prune (now)": (binary, compiled)}
    result: dict = {"benchmark": "fold of item-pairs messages: layouts, and the Python against the compiled fold",
                    "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version()},
                    "events": len(events), "messages": len(flat), "variants": {}}
    stores = {}
    try:
        for _ in range(args.rounds):  # alternated, so a busy moment on the machine hits all
            for name, (encoded, (cooccurrence.fold_pairs, cooccurrence.prune_neighbours)) in variants.items():
                store, total, parse = fold_all(encoded, config)
                stores[name] = orjson.dumps(store)
                row = result["variants"].setdefault(name, {"bytes": sum(map(len, encoded)), "us_per_interaction": [],
                                                           "parse_us_per_interaction": []})
                row["us_per_interaction"].append(round(total / len(events) * 1e6, 2))
                row["parse_us_per_interaction"].append(round(parse / len(events) * 1e6, 2))
    finally:
        cooccurrence.fold_pairs, cooccurrence.prune_neighbours = compiled
    best = {n: min(v["us_per_interaction"]) for n, v in result["variants"].items()}
    result["compiled_to_python_speedup_best_of_rounds"] = round(
        best["flat layout, Python fold and prune"] / best["flat layout, compiled fold and prune"], 2)
    result["binary_to_json_speedup_best_of_rounds"] = round(
        best["flat layout, compiled fold and prune"] / best["binary layout, compiled fold and prune (now)"], 2)
    result["now_to_weighted_speedup_best_of_rounds"] = round(
        best["weighted layout, Python prune (before)"] / best["binary layout, compiled fold and prune (now)"], 2)
    result["identical_records"] = len(set(stores.values())) == 1
    result["interaction_records"] = time_records(events, config, args.rounds)
    result["prune"] = time_prunes(orjson.loads(stores["binary layout, compiled fold and prune (now)"]), config, args.rounds)
    write_result(args.out, result)


if __name__ == "__main__":
    main()
