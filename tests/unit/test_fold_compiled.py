"""The compiled co-occurrence functions (models/_cooccurrence.c) against their Python references:
the same item-pairs records sent for an interaction, byte-identical item records folded from the
same messages (redeliveries included), the same accept or reject of bad ones, and the same
neighbours kept in the same order."""
from __future__ import annotations

import functools
import random
import shutil

import orjson
import pytest

from models.candidates import cooccurrence
from models.candidates.cooccurrence import (CooccurrenceConfig, decay_powers, fold_pairs_python, folding_state,
                                 interaction_records, interaction_records_python, key_partition, prune,
                                 prune_by_weight)
from streams.stages.neighbours import MALFORMED as CAUGHT  # what the neighbours stage dead-letters

compiled = pytest.importorskip("models._cooccurrence", reason="the extension was not built (no C compiler)")


def test_the_worker_folds_with_the_compiled_fold_where_a_compiler_is():
    if shutil.which("cc") is None:
        pytest.skip("no C compiler")
    assert cooccurrence.fold_pairs is compiled.fold_pairs
    assert cooccurrence.prune_neighbours is cooccurrence.prune_neighbours_compiled


def messages(seed: int, n: int = 3000, items: int = 60, partitions: int = 2, window: int = 6) -> list[list]:
    """Item-pairs messages (their ``pairs``) for random interactions from three source partitions:
    repeated items within windows, times that go back (the trending count must not decay
    forward), integer and float times, and a batch delivered again after a 'crash' (a redelivery
    of offsets already folded, followed by new ones)."""
    rng = random.Random(seed)
    histories: dict[str, list[str]] = {}
    offsets = {0: 0, 1: 0, 2: 0}
    batches: list[list] = []
    records: list[list] = []
    for n_event in range(n):
        source = rng.randrange(3)
        user = f"u{rng.randrange(40)}"
        item = f"i{min(int(rng.expovariate(0.1)), items - 1)}"
        ts = rng.choice([1000.0 + n_event * 3.5, 1000 + n_event, 900.0])
        window_items = histories.setdefault(user, [])[-window:]
        by_partition, _ = interaction_records(source, offsets[source], ts, item, window_items, partitions)
        records.append(by_partition)
        offsets[source] += 1
        histories[user].append(item)
        if len(records) == 200:
            batches.append(records)
            if rng.random() < 0.3:  # redelivered: the second half of this batch again, before the next
                batches.append(records[100:])
            records = []
    batches.append(records)
    out = []
    for batch in batches:
        for partition in range(partitions):
            pairs = [r[partition] for r in batch if partition in r]
            if pairs:
                out.append(orjson.loads(orjson.dumps(pairs)))  # as parsed from the wire
    return out


def fold_all(fold, all_pairs: list[list], config: CooccurrenceConfig, per_batch: int = 7) -> bytes:
    store: dict = {}
    powers = decay_powers(config.decay, config.window)
    counts = []
    for start in range(0, len(all_pairs), per_batch):
        folding: dict = {}
        for pairs in all_pairs[start:start + per_batch]:
            fold(folding, functools.partial(folding_state, folding, store.get), pairs, powers,
                 config.trending_half_life)
        for item, (record, new, skipped) in folding.items():
            counts.append((item, new, skipped))
            if new:
                store[item] = prune(record, config)
    return orjson.dumps([store, counts])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_compiled_and_python_folds_leave_byte_identical_records(seed):
    config = CooccurrenceConfig(window=6, neighbours=10, decay=0.8, trending_half_life=50.0)
    all_pairs = messages(seed)
    python = fold_all(fold_pairs_python, all_pairs, config)
    assert fold_all(compiled.fold_pairs, all_pairs, config) == python
    store, counts = orjson.loads(python)
    assert sum(skipped for _, _, skipped in counts) > 0  # the redeliveries were skipped, not folded
    assert any(len(r["neighbours"]) == 10 for r in store.values())  # and pruning ran


GOOD = [0, 5, 100.0, "i1", ["i2", 0], ["i3", 1]]
BAD = {
    "not a list": (0, 5, 100.0, "i1", None, []),
    "five fields": [0, 5, 100.0, "i1", None],
    "offset as text": [0, "5", 100.0, "i1", None, []],
    "float offset": [0, 5.0, 100.0, "i1", None, []],
    "time as text": [0, 5, "100", "i1", None, []],
    "item not a string": [0, 5, 100.0, 7, None, []],
    "own not a list": [0, 5, 100.0, "i1", "i2", []],
    "others missing": [0, 5, 100.0, "i1", None, None],
    "odd pairs": [0, 5, 100.0, "i1", None, ["i2", 0, "i3"]],
    "id not a string": [0, 5, 100.0, "i1", None, [3, 0]],
    "distance as text": [0, 5, 100.0, "i1", None, ["i2", "0"]],
    "float distance": [0, 5, 100.0, "i1", None, ["i2", 0.0]],
    "negative distance": [0, 5, 100.0, "i1", ["i2", -1], []],
    "distance past the window": [0, 5, 100.0, "i1", None, ["i2", 6]],
}


@pytest.mark.parametrize("name", BAD)
def test_both_folds_reject_the_same_malformed_interactions_after_the_same_changes(name):
    """Each is rejected with an error the stage dead-letters, after folding the good interaction
    before it the same way (the stage then folds the batch again without the message)."""
    powers = decay_powers(0.8, 6)
    outcomes = []
    for fold in (fold_pairs_python, compiled.fold_pairs):
        folding: dict = {}
        with pytest.raises(CAUGHT):
            fold(folding, functools.partial(folding_state, folding, lambda _: None), [GOOD, BAD[name]], powers, 3600.0)
        outcomes.append(orjson.dumps(folding))
    assert outcomes[0] == outcomes[1] and b'"i1"' in outcomes[0]


def test_a_redelivered_interaction_with_a_bad_distance_is_still_rejected():
    """The check comes before the redelivery test, in both: what is malformed never depends on state."""
    powers = decay_powers(0.8, 6)
    for fold in (fold_pairs_python, compiled.fold_pairs):
        folding: dict = {}
        open_state = functools.partial(folding_state, folding, lambda _: None)
        fold(folding, open_state, [GOOD], powers, 3600.0)
        with pytest.raises(ValueError):
            fold(folding, open_state, [[0, 5, 100.0, "i1", ["i2", 9], []]], powers, 3600.0)


def test_the_compiled_prune_keeps_the_same_neighbours_in_the_same_order():
    rng = random.Random(3)
    for size in (0, 1, 5, 241, 600):
        # few distinct weights, so many ties are broken by id, among ids of mixed length and script
        neighbours = {rng.choice(["i", "é", "x", "I"]) + str(rng.randrange(10 ** 6)): rng.choice([0.8, 1.0, 0.64, 2.44])
                      for _ in range(size)}
        for keep in (0, 3, 200):
            got = compiled.prune_neighbours(neighbours, keep)
            assert orjson.dumps(got) == orjson.dumps(prune_by_weight(neighbours, keep))
            assert cooccurrence.prune_neighbours_compiled(neighbours, keep) == got


def test_the_compiled_prune_leaves_what_is_not_str_and_float_to_python():
    assert compiled.prune_neighbours({"i1": 1, "i2": 2.0}, 1) is None  # an integer weight
    assert compiled.prune_neighbours({"i1": float("nan")}, 1) is None
    assert cooccurrence.prune_neighbours_compiled({"i1": 1, "i2": 2.0}, 1) == {"i2": 2.0}


def test_the_compiled_records_of_an_interaction_are_the_python_ones():
    """Windows with repeats, the item itself among them, empty ones, ids of any script, and one to
    eight item partitions: the same records in the same order (the order of a partition's message)."""
    rng = random.Random(5)
    for _ in range(3000):
        ids = [f"i{n}" for n in range(rng.randrange(1, 40))] + ["é9", "テ"]
        window = [rng.choice(ids) for _ in range(rng.randrange(0, 30))]
        item, partitions = rng.choice(ids), rng.choice([1, 2, 3, 8])
        args = (rng.randrange(8), rng.randrange(10 ** 9), rng.choice([1.5e9, 7]), item, window, partitions)
        got, want = compiled.interaction_records(*args, {}, key_partition), interaction_records_python(*args)
        assert orjson.dumps([list(got[0].items()), got[1]]) == orjson.dumps([list(want[0].items()), want[1]])
        assert orjson.dumps(list(interaction_records(*args)[0].items())) == orjson.dumps(list(want[0].items()))


def test_the_partition_cache_is_kept_bounded(monkeypatch):
    monkeypatch.setattr(cooccurrence, "PARTITION_CACHE_SIZE", 4)
    monkeypatch.setattr(cooccurrence, "_partition_caches", {})
    for n in range(10):
        interaction_records(0, n, 1.0, f"i{n}", [f"j{n}"], 3)
        assert len(cooccurrence._partition_caches[3]) <= 4


def mutations():
    """Values a producer of garbage could put anywhere in an interaction (2 ** 64 - 1 parses from
    JSON; the larger ones stand for any overflow)."""
    return [2 ** 64 - 1, ["i2", 2 ** 64 - 1], None, True, -1, 0, 5, 2 ** 70, -(2 ** 70), 1.5, -0.0, 1e308, "", "i1", "é", [], ["i2"], ["i2", 0],
            ["i2", 2 ** 70], ["i2", -(2 ** 70)], ["i2", True], [["i2", 0]], {}, {"i2": 0}, [None, None],
            [0, "i2"], ["i2", 0, "i3", 5], ["i2", 0, "i2", 1], 10 ** 400]


@pytest.mark.parametrize("seed", range(4))
def test_garbage_in_any_field_is_rejected_alike_or_folded_alike_never_a_crash(seed):
    """Random fields of random interactions replaced by garbage, fed to both folds on the same
    records: either both raise an error the stage dead-letters, or both leave the same records.
    (A crash here would be the worker's: the compiled fold runs inside it.)"""
    rng = random.Random(seed)
    powers = decay_powers(0.8, 6)
    garbage = mutations()
    for _ in range(400):
        pairs = [list(GOOD), [1, 6, 200.0, "i2", None, ["i1", 0]]]
        for _ in range(rng.randrange(1, 4)):
            interaction = rng.choice(pairs)
            interaction[rng.randrange(6)] = rng.choice(garbage)
        outcomes = []
        for fold in (fold_pairs_python, compiled.fold_pairs):
            folding: dict = {}
            stored = {"i1": {"count": 1, "trend": 1.0, "trend_t": 50.0, "neighbours": {"i9": 1.0}, "applied": {"0": 2}}}
            try:
                fold(folding, functools.partial(folding_state, folding, stored.get), pairs, powers, 3600.0)
                error = None
            except CAUGHT:
                error = "rejected"
            outcomes.append((error, repr(folding)))
        assert outcomes[0] == outcomes[1], pairs


def test_the_compiled_copy_of_a_record_is_the_python_one_with_its_ids_interned():
    import sys

    from models.candidates.cooccurrence import writable, writable_python

    for seed in range(3):
        folding: dict = {}
        for pairs in messages(seed, n=400):
            fold_pairs_python(folding, functools.partial(folding_state, folding, lambda _: None), pairs,
                              decay_powers(0.8, 6), 3600.0)
        for record, _, _ in folding.values():
            stored = orjson.loads(orjson.dumps(record))  # as the table gives it: ids never interned
            copy = compiled.writable(stored)
            assert orjson.dumps(copy) == orjson.dumps(writable_python(stored)) == orjson.dumps(record)
            assert copy is not stored and copy["neighbours"] is not stored["neighbours"]
            assert copy["applied"] is not stored["applied"]
            assert all(k is sys.intern(k) for k in [*copy, *copy["neighbours"], *copy["applied"]])
            assert orjson.dumps(compiled.writable(copy)) == orjson.dumps(copy)  # interned already: dict's own copy
    # what is not dicts is left to the Python copy, which raises or copies as it always did
    assert compiled.writable({"neighbours": [("i1", 1.0)], "applied": {}}) is None
    assert writable({"count": 0, "neighbours": [("i1", 1.0)], "applied": {}})["neighbours"] == {"i1": 1.0}
    assert compiled.writable({"neighbours": {}}) is None
    with pytest.raises(KeyError):
        writable({"count": 1, "neighbours": {}})


# -- the binary item-pairs message ------------------------------------------------------------

def float_times(all_pairs: list[list]) -> list[list]:
    """``messages`` with every time a float, as the interactions stage sends them (epoch seconds)."""
    return [[[s, o, float(t), i, own, others] for s, o, t, i, own, others in pairs] for pairs in all_pairs]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_both_encoders_write_the_same_bytes_and_both_decoders_give_the_json_payload(seed):
    for pairs in float_times(messages(seed)):
        data = compiled.encode_pairs(pairs, 0.8, 6)
        assert data == cooccurrence.encode_pairs_python(pairs, 0.8, 6)
        payload = {"pairs": pairs, "decay": 0.8, "window": 6}
        assert compiled.decode_pairs(data) == cooccurrence.decode_pairs_python(data) == payload
        assert cooccurrence.decode_message(data) == orjson.loads(orjson.dumps(payload))  # what its JSON parses to


@pytest.mark.parametrize("seed", [0, 1])
def test_a_binary_message_folds_to_the_records_its_json_folds_to(seed):
    config = CooccurrenceConfig(decay=0.8, window=6)
    as_json = float_times(messages(seed))
    as_binary = [compiled.decode_pairs(compiled.encode_pairs(pairs, 0.8, 6))["pairs"] for pairs in as_json]
    assert fold_all(compiled.fold_pairs, as_binary, config) == fold_all(compiled.fold_pairs, as_json, config)
    assert fold_all(fold_pairs_python, as_binary, config) == fold_all(fold_pairs_python, as_json, config)


def test_the_decoded_ids_are_one_interned_object_per_id():
    pairs = float_times(messages(0))[0]
    decoded = compiled.decode_pairs(compiled.encode_pairs(pairs, 0.8, 6))["pairs"]
    ids = [x for record in decoded for x in [record[3], *(record[4] or [])[0::2], *record[5][0::2]]]
    by_text = {}
    for id_ in ids:
        assert by_text.setdefault(id_, id_) is id_
    assert all(__import__("sys").intern(id_) is id_ for id_ in by_text)


@pytest.mark.parametrize("encode", ["compiled", "python"])
def test_the_encoders_refuse_what_the_stage_never_sends(encode):
    fn = compiled.encode_pairs if encode == "compiled" else cooccurrence.encode_pairs_python
    good = [0, 5, 100.0, "i1", ["i2", 0], ["i3", 1]]
    for bad in ([0, 5, 100, "i1", None, []],  # an integer time: its JSON would fold to different bytes
                [0, 5, 100.0, 7, None, []], [0, 5, 100.0, "i1", ["i2"], []], [0, 5, 100.0, "i1", None, [3, 0]],
                [0, 5, 100.0, "i1", None, ["i2", 0.5]], [0, 5.0, 100.0, "i1", None, []], [0, 5, 100.0, "i1", None]):
        with pytest.raises((TypeError, ValueError)):
            fn([good, bad], 0.8, 6)


def corrupted(data: bytes, rng: random.Random) -> bytes:
    """A message with some of its bytes changed, cut short, lengthened or a count rewritten."""
    data = bytearray(data)
    kind = rng.randrange(5)
    if kind == 0:
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif kind == 1:
        del data[rng.randrange(len(data)):]
    elif kind == 2:
        data += bytes(rng.randrange(256) for _ in range(rng.randrange(1, 9)))
    elif kind == 3:  # a count in the header, or a length, an index or a count further on
        at = rng.choice([12, 16, 20, 24, rng.randrange(0, len(data) - 4)])
        data[at:at + 4] = rng.choice([0, 1, 2, 0x7FFFFFFF, 0xFFFFFFFF, rng.randrange(1 << 32)]).to_bytes(4, "little")
    else:
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    return bytes(data)


@pytest.mark.parametrize("seed", range(4))
def test_corrupted_binary_messages_are_rejected_alike_or_decoded_alike_never_a_crash(seed):
    """Both decoders on the same damaged bytes: the same ValueError (which the neighbours stage
    dead-letters) or the same payload (the fold then checks it as it checks a parsed JSON one)."""
    rng = random.Random(seed)
    originals = [compiled.encode_pairs(pairs, 0.8, 6) for pairs in float_times(messages(seed, n=400))]
    seen = set()
    for _ in range(500):
        data = corrupted(rng.choice(originals), rng)
        outcomes = []
        for decode in (compiled.decode_pairs, cooccurrence.decode_pairs_python):
            try:
                outcomes.append(("payload", decode(data)))
            except ValueError as exc:
                assert isinstance(exc, CAUGHT)
                outcomes.append(("rejected", str(exc)))
        assert outcomes[0] == outcomes[1]
        seen.add(outcomes[0][0])
    assert seen == {"payload", "rejected"}  # the damage reached both outcomes
