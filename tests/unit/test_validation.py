"""The compiled validator and the JSON Schema files agree: same verdict, same field in the error.

The corpus: a valid event of every kind (built by the code that publishes it), then every
mutation of every field at every depth (wrong types, null, empty and overlong strings, bad
times, missing required fields, extra fields), plus the bad-input cases of the README's table (in full: docs/design/events.md).
"""
from __future__ import annotations

import copy

import pytest

import schemas
from streams.events import Trigger, dead_letter_record
from streams.stages.interactions import summary_event
from streams.stages.recommendations import list_record
from streams.settings import Settings
from streams.state import UserState

T = "2026-03-01T10:00:00Z"


class Message:
    topic, partition, offset, key, value = "interactions", 2, 41, b"u1", b"\xff not json"


def valid_events() -> dict[str, dict]:
    trigger = Trigger("interactions", 0, 7, T, "interaction", 1_700_000_000.0)
    state = UserState("u1", interaction_count=3, summary_version=1)
    return {
        "interaction": {"user_id": "u1", "item_id": "i1", "type": "rating", "value": 4.0, "event_time": T,
                        "event_id": "e1"},
        "item": {"item_id": "i1", "op": "upsert", "title": "Heat", "description": "A heist.",
                 "categories": ["Crime", "Drama"], "image": "https://example.org/heat.jpg", "event_time": T},
        "recommendation": list_record(state, [("i2", 0.5, ("cooccurrence",)), ("i3", 0.25, ())], "blend",
                                      "candidates:blend", 1, trigger, versions={"sequential": None}),
        "user_summary": summary_event(Settings(), "u1", 0, 1, "Likes heists.",
                                      [{"item_id": "i1", "event_time": T, "offset": 7}], 3, 1_700_000_000.0),
        "dead_letter": dead_letter_record(Message(), "MalformedJSON", "Expecting value"),
        **between_roles(trigger),
    }


def between_roles(trigger: Trigger) -> dict[str, dict]:
    """The four messages the state and llm roles exchange, built by the stages that send them."""
    from models.candidates.blend import Fused
    from models.llm.captioner import Caption
    from streams.stages.interactions import InteractionsStage
    from streams.stages.recommendations import RecommendationsStage
    from streams.state import content_hash
    from tests.unit.test_stages import make_services

    services = make_services()
    services.item_profiles["i1"] = {"item_id": "i1", "title": "Heat", "categories": ["Crime"], "caption": None}
    entries = [{"item_id": f"i{n}", "type": "rating", "value": 4.0, "event_time": T, "offset": n} for n in (1, 2, 3)]
    state = UserState("u1", interaction_count=3, pending_block=entries, partition=0)
    summary_request = InteractionsStage(services).summary_request(state)
    state.summary, state.summary_version = "Likes heists.", 1
    rerank_request = RecommendationsStage(services).rerank_request(
        state, trigger, [Fused("i1", 0.5, ("cooccurrence",)), Fused("i2", 0.25, ())],
        [{"cooccurrence": 0.5, "log_popularity": 1.0}, {}])
    item = {"item_id": "i1", "op": "upsert", "title": "Heat", "categories": ["Crime"],
            "image": "https://example.org/heat.jpg", "event_time": T}
    caption_request = {**item, "content_hash": content_hash(item)}  # as ItemsStage sends it
    caption = {"item_id": "i1", "request": caption_request,  # as CaptionsStage.publish sends it
               **Caption("A heist thriller in Los Angeles.", "text", "https image references are not allowed",
                         None).to_dict()}
    return {"summary_request": summary_request, "rerank_request": rerank_request,
            "caption_request": caption_request, "caption": caption}


BAD_VALUES = [None, 0, -1, 1.5, True, "", "x" * 300, "x" * 300_000, [], ["x"], [1], {}, {"a": 1},
              "2026-03-01T10:00:00", "2026-13-01T10:00:00Z", "tomorrow", "2026-03-01", "delete", "upsert"]


def mutations(event: dict):
    """Every field of ``event`` (nested dicts and the first element of lists too) replaced by each
    bad value, removed, and one extra field added."""
    def walk(node, path):
        if isinstance(node, dict):
            for key in list(node):
                yield path + [key]
                yield from walk(node[key], path + [key])
        elif isinstance(node, list) and node:
            yield path + [0]
            yield from walk(node[0], path + [0])

    def at(root, path):
        for step in path[:-1]:
            root = root[step]
        return root

    for path in walk(event, []):
        for value in BAD_VALUES:
            changed = copy.deepcopy(event)
            at(changed, path)[path[-1]] = value
            yield changed
        if isinstance(path[-1], str):
            removed = copy.deepcopy(event)
            del at(removed, path)[path[-1]]
            yield removed
    yield {**event, "extra": {"nested": [1, 2]}}
    yield {k: v for k, v in event.items() if k == "event_time"}


def reference_verdict(kind: str, event) -> str | None:
    """jsonschema alone (the validator before the compiled one): the message, or None if valid."""
    error = next(iter(sorted(schemas.validator(kind).iter_errors(event), key=lambda e: list(e.path))), None)
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "(root)"
    return f"{kind} {where}: {error.message}"


def corpus():
    for kind, event in valid_events().items():
        yield kind, event
        yield from ((kind, mutated) for mutated in mutations(event))


CORPUS = list(corpus())


def test_the_corpus_has_both_verdicts_for_every_kind():
    verdicts = {(kind, reference_verdict(kind, event) is None) for kind, event in CORPUS}
    assert verdicts == {(kind, ok) for kind in schemas.KINDS for ok in (True, False)}
    assert len(CORPUS) > 1000


@pytest.mark.parametrize("kind", schemas.KINDS)
def test_compiled_and_reference_validators_agree_on_every_event(kind):
    import fastjsonschema

    disagreements = []
    for event in (e for k, e in CORPUS if k == kind):
        try:
            schemas.compiled(kind)(copy.deepcopy(event))
            compiled_ok = True
        except fastjsonschema.JsonSchemaValueException:
            compiled_ok = False
        if compiled_ok != (reference_verdict(kind, event) is None):
            disagreements.append((compiled_ok, event))
    assert not disagreements, disagreements[:3]


@pytest.mark.parametrize("kind", schemas.KINDS)
def test_validate_names_the_field_jsonschema_names_and_never_changes_the_event(kind):
    for event in (e for k, e in CORPUS if k == kind):
        before = copy.deepcopy(event)
        expected = reference_verdict(kind, event)
        if expected is None:
            assert schemas.validate(kind, event) == before
        else:
            with pytest.raises(schemas.InvalidEvent) as info:
                schemas.validate(kind, event)
            assert str(info.value) == expected and info.value.kind == "SchemaError"
        assert event == before  # no defaults filled in


def test_an_item_without_op_gets_no_default_from_validation():
    item = {"item_id": "i1", "title": "Heat", "event_time": T}
    assert schemas.validate("item", dict(item)) == item
