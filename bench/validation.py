"""Validation events/s: the compiled validator against jsonschema on the same events, in one run.

The events are MovieLens-100K interactions as the wire carries them (JSON bytes). Each path
parses and validates every event; ``parse_only`` is json.loads alone, the floor under both.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

import schemas
from streams import replay as rp
from bench import write_result


def reference_validate(kind: str, event: dict) -> dict:
    """schemas.validate before the compiled validator: jsonschema decides every event."""
    error = next(iter(sorted(schemas.validator(kind).iter_errors(event), key=lambda e: list(e.path))), None)
    if error is not None:
        raise schemas.InvalidEvent("SchemaError", str(error.message))
    return event


def rate(fn, payloads: list[bytes], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for raw in payloads:
            fn(raw)
        best = min(best, time.perf_counter() - start)
    return len(payloads) / best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", default="bench/results/validation.json")
    args = parser.parse_args()
    payloads = [json.dumps(e).encode() for e in rp.movielens_events()[: args.events]]
    for kind in ("interaction",):
        schemas.validator(kind), schemas.compiled(kind)  # built before timing
    paths = {
        "parse_only": lambda raw: json.loads(raw),
        "jsonschema": lambda raw: reference_validate("interaction", json.loads(raw)),
        "compiled": lambda raw: schemas.parse("interaction", raw),
    }
    rates = {name: round(rate(fn, payloads, args.repeat), 1) for name, fn in paths.items()}
    result = {"benchmark": "validation", "events": len(payloads),
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
              "events_per_s": rates,
              "ratio_compiled_to_jsonschema": round(rates["compiled"] / rates["jsonschema"], 2),
              "note": "compiled = schemas.parse as the worker runs it (size and UTF-8 checks, json.loads, "
                      "fastjsonschema); best of the repeats"}
    write_result(args.out, result)


if __name__ == "__main__":
    main()
