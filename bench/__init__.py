"""Benchmarks that write their figures as JSON under bench/results."""
from __future__ import annotations

import json
from pathlib import Path


def write_result(out: str | Path, result: dict) -> None:
    """The figures to ``out`` (its folder made) and to stdout, as every benchmark reports them."""
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
