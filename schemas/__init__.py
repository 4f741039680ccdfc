"""JSON Schemas (2020-12) for every event, and the one place events are parsed and validated."""
from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from importlib import resources
from typing import Any

import orjson
from jsonschema import Draft202012Validator, FormatChecker

KINDS = ("item", "interaction", "recommendation", "user_summary", "dead_letter",
         "summary_request", "rerank_request", "caption_request", "caption")  # the last four: between roles
MAX_EVENT_BYTES = 1_000_000
# the replay's end-of-backfill marker: an interactions-topic message with this header and value
CONTROL_HEADER = "mmsr-control"
BACKFILL_END = b"backfill-end"


class InvalidEvent(ValueError):
    """An event that must go to the dead-letter topic; ``kind`` names the failure class."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def schema(kind: str) -> dict:
    return json.loads((resources.files("schemas") / f"{kind}.schema.json").read_text())


_formats = FormatChecker()


@_formats.checks("date-time", raises=ValueError)
def _rfc3339_with_zone(value: object) -> bool:
    """RFC 3339 requires a zone; a naive time would be read differently by every consumer."""
    if not isinstance(value, str):
        return True
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError(f"{value!r} has no time zone")
    return True


@lru_cache(maxsize=None)
def validator(kind: str) -> Draft202012Validator:
    return Draft202012Validator(schema(kind), format_checker=_formats)


def _is_rfc3339_with_zone(value: object) -> bool:
    try:
        return _rfc3339_with_zone(value)
    except ValueError:
        return False


@lru_cache(maxsize=None)
def compiled(kind: str):
    """The same schema compiled to Python by fastjsonschema (its draft-07 keywords are all these
    schemas use, and tests/unit/test_validation.py holds the two validators to the same verdicts).
    Defaults are not filled in: validation never changes an event."""
    import fastjsonschema

    return fastjsonschema.compile(_assertions_only(schema(kind)), formats={"date-time": _is_rfc3339_with_zone},
                                  use_default=False)


ANNOTATIONS = {"contentEncoding", "contentMediaType"}  # asserted by draft-07 compilers, annotations in 2020-12


def _assertions_only(node):
    if isinstance(node, dict):
        return {k: _assertions_only(v) for k, v in node.items() if k not in ANNOTATIONS}
    if isinstance(node, list):
        return [_assertions_only(v) for v in node]
    return node


def validate(kind: str, event: Any) -> dict:
    """Raise InvalidEvent naming the first failing field, or return the event.

    The compiled validator decides (every event pays for it); only a rejected event is run
    through jsonschema as well, so its message names the same field as it always has.
    """
    import fastjsonschema

    try:
        compiled(kind)(event)
        return event
    except fastjsonschema.JsonSchemaValueException as exc:
        compiled_error = exc
    error = next(iter(sorted(validator(kind).iter_errors(event), key=lambda e: list(e.path))), None)
    if error is None:  # the validators disagree: the stricter verdict stands, in the compiled one's words
        where = "/".join(str(p) for p in compiled_error.path[1:]) or "(root)"
        raise InvalidEvent("SchemaError", f"{kind} {where}: {compiled_error.message}")
    where = "/".join(str(p) for p in error.absolute_path) or "(root)"
    raise InvalidEvent("SchemaError", f"{kind} {where}: {error.message}")


def parse(kind: str, raw: bytes | str | None) -> dict:
    """Bytes off the wire to a validated event; every failure is an InvalidEvent with a reason."""
    if raw is None:
        raise InvalidEvent("EmptyValue", "message has no value")
    if isinstance(raw, str):
        raw = raw.encode()
    if len(raw) > MAX_EVENT_BYTES:
        raise InvalidEvent("TooLarge", f"{len(raw)} bytes exceeds the {MAX_EVENT_BYTES}-byte event limit")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidEvent("NotUTF8", f"value is not UTF-8: {exc.reason} at byte {exc.start}") from None
    try:
        event = orjson.loads(raw)  # RFC 8259 strictly: NaN, Infinity and integers beyond 64 bits are refused
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent("MalformedJSON", f"{exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if not isinstance(event, dict):
        raise InvalidEvent("SchemaError", f"{kind} (root): expected a JSON object, got {type(event).__name__}")
    return validate(kind, event)


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))
