"""Item co-occurrence (co-visitation) counts over windows of user histories, and trending counts.

Pure functions over plain records, so the stream (``streams.stages.neighbours``), the offline
evaluation and the tests share one definition:

- each applied interaction with item x adds, for each of the user's previous W items y (the
  nearest first, at distance d = 1..W), a weight decay^(d-1) to the pair (x, y) in both
  directions, and 1 to x's count;
- an item's record keeps its count, its top-M neighbours (pruned when they exceed M by a fifth)
  and a time-decayed count for "trending" (half-life in event time);
- a user's candidates are the cosine-normalised neighbour weights of their recent items,
  c(r, y) / sqrt(n(r) n(y)), summed over the recent items r, each weighted by its recency
  (halving every ``query_half_life`` items back: +13% HR@10 over equal weights in the offline
  prequential replay of ML-100K's last 10%).

Records carry, per source partition, the offset of the last interaction applied, so an entry
that is delivered again after a crash is skipped: the same rule that protects user state.
"""
from __future__ import annotations

import functools
import math
import struct
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import orjson
from aiokafka.partitioner import murmur2


MAX_WINDOW = 1000  # the longest pair window (W) a message may name: its weights are tabled per message


@dataclass(frozen=True)
class CooccurrenceConfig:
    window: int = field(default=20, metadata={"help": "previous items of the user paired with each interaction (W)"})
    neighbours: int = field(default=200, metadata={"help": "neighbours kept per item (M)"})
    decay: float = field(default=0.8, metadata={"help": "weight factor per step of distance in the window (1: none)"})
    trending_half_life: float = field(default=14 * 86400.0, metadata={
        "help": "half-life of the trending count, seconds of event time"})
    query_half_life: float = field(default=3.0, metadata={
        "help": "half-life, in items, of a recent item's weight in the user's query (the newest weighs 1; 0: all 1)"})


def pair_window(previous: list[str], config: CooccurrenceConfig) -> list[str]:
    """The previous items an interaction pairs with: the last W, oldest first."""
    return previous[max(len(previous) - config.window, 0):] if config.window > 0 else []


def window_weights(window: list[str], item: str, decay: float) -> list[tuple[str, float]]:
    """(other item, pair weight) for an interaction with ``item`` after ``window`` (oldest first):
    decay^(d-1) at distance d, the nearest occurrence of a repeated item only, never the item itself."""
    powers = decay_powers(decay, len(window))
    return [(other, powers[step]) for other, step in window_steps(window, item)]


def window_steps(window: list[str], item: str) -> list[tuple[str, int]]:
    """(other item, d - 1) for the items ``window_weights`` weighs: the weight is decay^(d-1)."""
    seen, out = {item}, []
    for step, other in enumerate(reversed(window)):
        if other not in seen:
            seen.add(other)
            out.append((other, step))
    return out


@functools.lru_cache(maxsize=256)
def decay_powers(decay: float, n: int) -> tuple[float, ...]:
    return tuple(decay ** d for d in range(n))


def pair_entries(previous: list[str], item: str, partition: int, offset: int, event_ts: float,
                 config: CooccurrenceConfig) -> dict[str, dict]:
    """The increments one interaction makes, by the item whose record they go to.

    ``previous``: the user's items before this one, oldest first (only the last W are paired;
    the item itself and repeats within the window are skipped).
    """
    weights = window_weights(pair_window(previous, config), item, config.decay)
    out: dict[str, dict] = {item: {"p": partition, "o": offset, "t": event_ts, "c": 1, "n": dict(weights)}}
    for other, weight in weights:
        out[other] = {"p": partition, "o": offset, "t": event_ts, "c": 0, "n": {item: weight}}
    return out


def apply_entries(record: dict | None, entries: Iterable[dict], config: CooccurrenceConfig) -> tuple[dict, int]:
    """The record with the entries applied (in order), and how many were new.

    An entry whose (partition, offset) is not after the last applied one of its partition is a
    redelivery and is skipped.
    """
    folding: dict[str, list] = {}
    fold_entries(folding, lambda _: record, "", entries, config)
    record, new, _ = folding[""]
    return prune(record, config), new


def fold_entries(folding: dict[str, list], get, item: str, entries: Iterable[dict], config: CooccurrenceConfig) -> None:
    """One item's increment objects (``pair_entries``' values) into ``folding``: item ->
    [record being changed, increments applied, increments skipped as redelivered]; ``get(item)``
    gives the stored record the first time the item is met. Records are pruned by the caller."""
    state = folding_state(folding, get, item)
    for e in entries:
        state[1 if apply_increment(state[0], str(e["p"]), e["o"], e["t"], e["c"], e["n"].items(),
                                   config.trending_half_life) else 2] += 1


def interaction_records(partition: int, offset: int, ts: float, item: str, window: list[str],
                        partitions: int) -> tuple[dict[int, list], int]:
    """``interaction_records_python``, compiled where ``models/_cooccurrence.c`` was built (it ran
    some twenty set, hash and list steps per interaction in the interactions stage); item
    partitions come from a cache of ``key_partition``, cleared when it holds 65,536 ids."""
    if _compiled is None:
        return interaction_records_python(partition, offset, ts, item, window, partitions)
    cache = _partition_caches.get(partitions)
    if cache is None or len(cache) >= PARTITION_CACHE_SIZE:
        cache = _partition_caches[partitions] = {}
    return _compiled.interaction_records(partition, offset, ts, item, window, partitions, cache, key_partition)


PARTITION_CACHE_SIZE = 1 << 16
_partition_caches: dict[int, dict[str, int]] = {}


def interaction_records_python(partition: int, offset: int, ts: float, item: str, window: list[str],
                               partitions: int) -> tuple[dict[int, list], int]:
    """What an interaction sends to each item partition its increments change, and how many
    increments it makes: ``{item partition: [source partition, offset, time, item, own, others]}``,
    ``own`` the pairs of the item's own record (None when the item is another partition's) and
    ``others`` the pairs of that partition's paired items (each record gets the pair with
    ``item``). Routed here, once, so the partitions' folds need neither the window nor the hash.

    Pairs are flat, ``[other, d - 1, other, d - 1, ...]``: the fold weighs them decay^(d-1) from
    the message's decay (``pairs_message``). A float weight per pair made the messages three
    times larger, and parsing them cost as much as folding them."""
    steps = window_steps(window, item)
    home = key_partition(item, partitions)
    out: dict[int, list] = {home: [partition, offset, ts, item, [x for pair in steps for x in pair], []]}
    for other, step in steps:
        target = key_partition(other, partitions)
        record = out.get(target)
        if record is None:
            record = out[target] = [partition, offset, ts, item, None, []]
        record[5] += (other, step)
    return out, 1 + len(steps)


def pairs_message(records: list[list], config: CooccurrenceConfig) -> dict:
    """An item-pairs message: ``interaction_records`` with the decay and window that weigh them."""
    return {"pairs": records, "decay": config.decay, "window": config.window}


PAIRS_MAGIC = b"MMP1"
_PAIRS_HEADER = struct.Struct("<4sdIIII")  # magic, decay, window, ids, interactions, pairs
_PAIRS_ROW = struct.Struct("<qqdIiII")  # source, offset, time, item index, own pairs (-1: None), other pairs, 0
_PAIR = struct.Struct("<II")  # id index, distance (d - 1)


def encode_pairs_message(records: list[list], config: CooccurrenceConfig) -> bytes:
    """``pairs_message`` in the binary layout (``models/_cooccurrence.c`` describes it): each id
    once per message, pairs as indexes. Parsing the JSON made a string object for every id of
    every pair, 6.9% of an ingest worker's samples (``bench/results/ingest_profile/``)."""
    if _compiled is None:
        return encode_pairs_python(records, config.decay, config.window)
    return _compiled.encode_pairs(records, float(config.decay), config.window)


def decode_message(value: bytes) -> dict:
    """An item-pairs message as ``fold_message`` takes it: the binary layout decoded to what
    its JSON form parses to, or the JSON that earlier workers (and ``MMSR_PAIRS_FORMAT=json``)
    send. Raises ValueError on anything else."""
    if value[:4] == PAIRS_MAGIC:
        return decode_pairs_python(value) if _compiled is None else _compiled.decode_pairs(value)
    return orjson.loads(value)


def encode_pairs_python(records: list[list], decay: float, window: int) -> bytes:
    """The reference for the compiled ``encode_pairs``: byte for byte the same message."""
    ids: dict[str, int] = {}

    def index(item_id) -> int:
        if type(item_id) is not str:
            raise TypeError("an item id in an item-pairs record is not a string")
        return ids.setdefault(item_id, len(ids))

    def flat(pairs) -> list[tuple[int, int]]:
        if type(pairs) is not list or len(pairs) % 2:
            raise TypeError("an item-pairs record's pairs must be a flat [id, distance, ...] list")
        out = []
        for item_id, step in zip(pairs[0::2], pairs[1::2]):
            if type(step) is not int:
                raise TypeError("a distance must be an integer")
            out.append((index(item_id), step))
        return out

    rows, pairs = [], []
    for record in records:
        if (type(record) is not list or len(record) != 6 or type(record[0]) is not int or type(record[1]) is not int
                or type(record[2]) is not float):
            raise TypeError("an item-pairs record must be [int source, int offset, float time, item, own, others]")
        source, offset, ts, item, own, others = record
        own_pairs = None if own is None else flat(own)
        other_pairs = flat(others)
        rows.append((source, offset, ts, index(item), -1 if own_pairs is None else len(own_pairs), len(other_pairs), 0))
        pairs += (own_pairs or []) + other_pairs
    encoded = [item_id.encode() for item_id in ids]
    return b"".join([_PAIRS_HEADER.pack(PAIRS_MAGIC, decay, window, len(ids), len(rows), len(pairs)),
                     struct.pack(f"<{len(encoded)}I", *map(len, encoded)), *encoded,
                     *(_PAIRS_ROW.pack(*row) for row in rows), *(_PAIR.pack(*pair) for pair in pairs)])


def decode_pairs_python(data: bytes) -> dict:
    """The reference for the compiled ``decode_pairs``: the same payload, the same rejects."""
    def malformed(what: str) -> ValueError:
        return ValueError(f"not an item-pairs message: {what}")

    if len(data) < _PAIRS_HEADER.size or data[:4] != PAIRS_MAGIC:
        raise malformed("no item-pairs header")
    _, decay, window, n_ids, n, n_pairs = _PAIRS_HEADER.unpack_from(data)
    at = _PAIRS_HEADER.size
    if n_ids * 4 > len(data) - at:
        raise malformed("more ids named than the message holds")
    lengths = struct.unpack_from(f"<{n_ids}I", data, at)
    at += 4 * n_ids
    if sum(lengths) + n * _PAIRS_ROW.size + n_pairs * _PAIR.size != len(data) - at:
        raise malformed("its lengths do not add up to its size")
    ids = []
    for length in lengths:
        ids.append(sys.intern(data[at:at + length].decode("utf-8")))
        at += length
    pair_at = at + n * _PAIRS_ROW.size
    pairs = [(ids[i] if i < n_ids else None, step) for i, step in _PAIR.iter_unpack(data[pair_at:])]
    taken = 0

    def read(count: int) -> list:
        nonlocal taken
        if count > n_pairs - taken:
            raise malformed("more pairs named than the message holds")
        out = []
        for item_id, step in pairs[taken:taken + count]:
            if item_id is None:
                raise malformed("an id index outside the message's ids")
            out += (item_id, step)
        taken += count
        return out

    interactions = []
    for source, offset, ts, item, own_count, others_count, reserved in _PAIRS_ROW.iter_unpack(data[at:pair_at]):
        if item >= n_ids or own_count < -1 or reserved != 0:
            raise malformed("an item index outside the message's ids" if item >= n_ids else "a malformed interaction")
        own = None if own_count < 0 else read(own_count)
        interactions.append([source, offset, ts, ids[item], own, read(others_count)])
    if taken != n_pairs:
        raise malformed("pairs left over")
    return {"pairs": interactions, "decay": decay, "window": window}


def fold_message(folding: dict[str, list], get, payload: dict, config: CooccurrenceConfig) -> None:
    """One item partition's message of interactions (in source order) into ``folding`` (as
    ``fold_entries``): the records ``pair_entries`` then ``apply_entries`` would make, without
    building the increment objects (about twenty per interaction, and most of a worker's time
    when it did). ``{"pairs"}`` is ``pairs_message``; ``{"interactions"}``, records with
    ``[[other, weight], ...]`` pairs, is what workers before it sent, so a topic written by one
    still folds after an upgrade. Raises on a malformed message, possibly after changing records."""
    open_state = functools.partial(folding_state, folding, get)
    if "pairs" in payload:
        decay, window = float(payload["decay"]), payload["window"]
        if not (0.0 < decay <= 1.0 and type(window) is int and 0 <= window <= MAX_WINDOW):
            raise ValueError(f"decay {decay!r} or window {window!r} out of range")
        fold_pairs(folding, open_state, payload["pairs"], decay_powers(decay, window),
                   float(config.trending_half_life))
    else:
        for source, offset, ts, item, own, others in payload["interactions"]:
            fold_interaction(folding, open_state, str(source), offset, ts, item, own, others,
                             config.trending_half_life)


def fold_pairs_python(folding: dict[str, list], open_state, pairs: list, powers: tuple[float, ...],
                      half_life: float) -> None:
    """A ``pairs_message``'s interactions into ``folding``; ``open_state(item)`` opens an item's
    state (``folding_state``). The reference for the compiled ``fold_pairs``
    (``models/_cooccurrence.c``), which the worker uses where it was built: the same checks, the
    same operations in the same order, byte-identical records. Each interaction is checked whole
    before it is folded: ids are strings, distances integers within the window."""
    for interaction in pairs:
        if type(interaction) is not list or len(interaction) != 6:
            raise ValueError("an interaction must be [source, offset, time, item, own, others]")
        source, offset, ts, item, own, others = interaction
        if type(offset) is not int or type(ts) not in (float, int) or type(item) is not str:
            raise TypeError("an interaction's offset must be an integer, its time a number, its item a string")
        own_weights = None if own is None else weighed(own, powers, "own pairs")
        fold_interaction(folding, open_state, str(source), offset, ts, item, own_weights,
                         weighed(others, powers, "other pairs"), half_life)


def weighed(pairs: list, powers: tuple[float, ...], what: str) -> list[tuple[str, float]]:
    """Flat ``[id, d, id, d, ...]`` pairs as (id, decay ** d); raises unless ids are strings and
    distances integers within the window."""
    if type(pairs) is not list:
        raise TypeError(f"{what} must be a list")
    if len(pairs) % 2:
        raise ValueError(f"{what} must pair each id with a distance")
    ids, steps = pairs[0::2], pairs[1::2]
    if not all(type(i) is str for i in ids):
        raise TypeError(f"an item id in {what} is not a string")
    if not all(isinstance(d, int) for d in steps):
        raise TypeError("a distance must be an integer")
    if steps and (min(steps) < 0 or max(steps) >= len(powers)):
        raise ValueError(f"a distance outside the window of {len(powers)}")
    return list(zip(ids, map(powers.__getitem__, steps)))


def fold_interaction(folding: dict[str, list], open_state, source: str, offset: int, ts: float, item: str, own,
                     others, half_life: float) -> None:
    """One interaction's increments to the records of one partition: ``own`` (the item's record
    gets every (other, weight) pair, None when it is another partition's) and ``others`` (each
    other's record gets the pair with ``item``). The increment to each other's record is
    ``apply_increment`` written out: it runs some twenty times per interaction, and the call cost
    33 against 29 us per interaction (``bench/fold.py``, best of 3, before the fold was compiled)."""
    if own is not None:
        state = folding.get(item) or open_state(item)
        state[1 if apply_increment(state[0], source, offset, ts, 1, own, half_life) else 2] += 1
    for other, weight in others:
        state = folding.get(other) or open_state(other)
        record = state[0]
        applied = record["applied"]
        if offset > applied.get(source, -1):
            applied[source] = offset
            neighbours = record["neighbours"]
            neighbours[item] = neighbours.get(item, 0.0) + weight
            state[1] += 1
        else:
            state[2] += 1


def folding_state(folding: dict[str, list], get, item: str) -> list:
    """``item``'s [record being changed, applied, skipped] in ``folding``, opened from ``get(item)`` once."""
    state = folding.get(item)
    if state is None:
        state = folding[item] = [writable(get(item)), 0, 0]
    return state


def writable(record: dict | None) -> dict:
    """A copy of a stored record (or a new one) that the increments may change in place; where
    ``models/_cooccurrence.c`` was built, its ids interned as the compiled fold interns the
    message's, so the fold's lookups find them by pointer (content and order are the same)."""
    if not record:
        return {"count": 0, "trend": 0.0, "trend_t": 0.0, "neighbours": {}, "applied": {}}
    if _compiled is not None:
        copy = _compiled.writable(record)
        if copy is not None:
            return copy
    return writable_python(record)


def writable_python(record: dict) -> dict:
    """The reference for the compiled ``writable``, and the copy of anything it does not take."""
    return {**record, "neighbours": dict(record["neighbours"]), "applied": dict(record["applied"])}


def apply_increment(record: dict, partition: str, offset: int, ts: float, count: int, weights, half_life: float) -> bool:
    """One interaction's increment to one record; False (and nothing changed) for a redelivery:
    an offset not after the last one applied from its source partition."""
    applied = record["applied"]
    if offset <= applied.get(partition, -1):
        return False
    applied[partition] = offset
    neighbours = record["neighbours"]
    for other, weight in weights:
        neighbours[other] = neighbours.get(other, 0.0) + weight
    if count:
        record["count"] += count
        record["trend"], record["trend_t"] = decayed(record["trend"], record["trend_t"], ts, half_life)
        record["trend"] += count
    return True


def prune(record: dict, config: CooccurrenceConfig) -> dict:
    """The top M neighbours once they exceed M by a fifth (ties by id, so replays agree)."""
    if len(record["neighbours"]) > config.neighbours * 1.2:
        record["neighbours"] = prune_neighbours(record["neighbours"], config.neighbours)
    return record


def prune_by_weight(neighbours: dict[str, float], keep: int) -> dict[str, float]:
    """The ``keep`` heaviest neighbours, heaviest first, ties by id. The reference for the
    compiled ``prune_neighbours``: a record is pruned in every batch once it is full, and this
    sort cost 44 us a record against 19 compiled (``bench/fold.py``)."""
    return dict(sorted(neighbours.items(), key=lambda kv: (-kv[1], kv[0]))[:keep])


def prune_neighbours_compiled(neighbours: dict[str, float], keep: int) -> dict[str, float]:
    kept = _compiled.prune_neighbours(neighbours, keep)
    return prune_by_weight(neighbours, keep) if kept is None else kept  # None: not all str ids and float weights


@functools.lru_cache(maxsize=1 << 16)
def key_partition(key: str, partitions: int) -> int:
    """The partition a message keyed ``key`` goes to under Kafka's default partitioner (murmur2,
    as the Java client and aiokafka compute it); cached, since the pure-Python hash is slow and
    the keys are the catalog's item ids."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


def decayed(value: float, at: float, now: float, half_life: float) -> tuple[float, float]:
    """``value`` recorded at time ``at``, decayed to ``now`` (never forward in time)."""
    if now <= at:
        return value, at
    return value * 0.5 ** ((now - at) / half_life), now


def trend_key(record: Mapping, half_life: float) -> float:
    """A number that orders items as their trending counts at any common moment would:
    log2(trend) + trend_t / half_life (the decay factor is the same for all)."""
    if not record or record.get("trend", 0) <= 0:
        return -math.inf
    return math.log2(record["trend"]) + record["trend_t"] / half_life


def neighbour_scores(recent: list[str], records: Mapping[str, Mapping | None], counts: Mapping[str, int],
                     exclude: set[str], query_half_life: float = 0.0) -> dict[str, float]:
    """Cosine co-occurrence scores of candidate items for a user with these recent items (oldest first)."""
    from models.candidates.retrieval import recency_weights

    weights = recency_weights(len(recent), query_half_life).tolist() if query_half_life > 0 else [1.0] * len(recent)
    scores: dict[str, float] = defaultdict(float)
    for r, query_weight in zip(recent, weights):
        record = records.get(r)
        if not record or not record.get("count"):
            continue
        scale = query_weight / math.sqrt(record["count"])
        for other, weight in record["neighbours"].items():
            if other in exclude:
                continue
            n_o = counts.get(other, 0)
            if n_o > 0:
                scores[other] += weight * scale / math.sqrt(n_o)
    return scores


# the compiled fold, prune and interaction records (models/_cooccurrence.c, built by setup.py
# where a C compiler is found); the Python references where it is not: the same records, slower
try:
    from models import _cooccurrence as _compiled
except ImportError:  # pragma: no cover - exercised where the extension was not built
    _compiled = None
fold_pairs = _compiled.fold_pairs if _compiled is not None else fold_pairs_python
prune_neighbours = prune_neighbours_compiled if _compiled is not None else prune_by_weight
