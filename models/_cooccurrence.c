/* The co-occurrence work done per pair, compiled: the records an interaction sends to the item
 * partitions (models.cooccurrence.interaction_records_python), the fold of an item-pairs message
 * (fold_pairs_python) and the prune of a record's neighbours (prune_by_weight), step for step.
 *
 * Why it exists: the per-pair loop of the fold runs some twenty times per interaction, and in
 * Python it was a third of what a worker spends on an interaction with co-occurrence on
 * (bench/fold.py). This does the same dictionary operations in the same order, with Python's
 * own number operations (PyNumber_*) wherever a value is computed, so the records it leaves are
 * byte-identical to the Python fold's (tests/unit/test_cooccurrence_compiled.py checks that on
 * ML-100K and on messages with redeliveries and bad fields). The Python fold stays the reference,
 * and the worker uses it where this module was not built.
 *
 * fold_pairs(folding, open_state, pairs, powers, half_life) -> None
 *   folding:    dict item -> [record being changed, applied, skipped]
 *   open_state: callable item -> that list, opened from the table and put into ``folding``
 *   pairs:      the message's list of [source, offset, ts, item, own | None, others]
 *   powers:     tuple of decay ** d for d in range(window)
 *   half_life:  float, the trending half-life
 * Raises ValueError or TypeError on a malformed interaction, possibly after folding earlier ones
 * (the stage folds the batch again without the message), as the Python fold does.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

static PyObject *key_applied, *key_neighbours, *key_count, *key_trend, *key_trend_t;
static PyObject *minus_one, *one, *zero_float, *half;

/* the interned copy of an id (a new reference): a record's dict finds an id by pointer when its key
 * is the same object, and otherwise reads the key's string from memory to compare it, a cache miss
 * per lookup at this fold's working set (bench/fold.py: 21 against 14 us per interaction when
 * every id is interned). Interning never changes a record's content or order. */
static PyObject *canonical(PyObject *id) {
    Py_INCREF(id);
    if (PyUnicode_CheckExact(id)) PyUnicode_InternInPlace(&id);
    return id;
}

/* state[index] += 1 */
static int bump(PyObject *state, Py_ssize_t index) {
    PyObject *now = PyList_GET_ITEM(state, index);
    PyObject *next = PyNumber_Add(now, one);
    if (next == NULL) return -1;
    PyList_SET_ITEM(state, index, next);
    Py_DECREF(now);
    return 0;
}

/* folding[item], opened by open_state the first time; borrowed, checked to be [dict, n, n] */
static PyObject *state_of(PyObject *folding, PyObject *open_state, PyObject *item) {
    PyObject *state = PyDict_GetItemWithError(folding, item);
    if (state == NULL) {
        if (PyErr_Occurred()) return NULL;
        PyObject *opened = PyObject_CallOneArg(open_state, item);
        if (opened == NULL) return NULL;
        Py_DECREF(opened);  /* open_state put it into folding, which keeps it */
        state = PyDict_GetItemWithError(folding, item);
        if (state == NULL) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_RuntimeError, "open_state did not open the item");
            return NULL;
        }
    }
    if (!PyList_CheckExact(state) || PyList_GET_SIZE(state) != 3 || !PyDict_CheckExact(PyList_GET_ITEM(state, 0))) {
        PyErr_SetString(PyExc_TypeError, "a folding state must be [record, applied, skipped]");
        return NULL;
    }
    return state;
}

static PyObject *dict_field(PyObject *record, PyObject *key) {
    PyObject *value = PyDict_GetItemWithError(record, key);
    if (value == NULL) {
        if (!PyErr_Occurred()) PyErr_SetObject(PyExc_KeyError, key);
        return NULL;
    }
    if (!PyDict_CheckExact(value)) {
        PyErr_Format(PyExc_TypeError, "a record's %S must be a dict", key);
        return NULL;
    }
    return value;
}

/* 1: the offset is after the record's last from ``source`` (and is now recorded), 0: a redelivery */
static int take_offset(PyObject *record, PyObject *source, PyObject *offset) {
    PyObject *applied = dict_field(record, key_applied);
    if (applied == NULL) return -1;
    PyObject *last = PyDict_GetItemWithError(applied, source);
    if (last == NULL && PyErr_Occurred()) return -1;
    int after = PyObject_RichCompareBool(offset, last == NULL ? minus_one : last, Py_GT);
    if (after <= 0) return after;
    return PyDict_SetItem(applied, source, offset) < 0 ? -1 : 1;
}

/* neighbours[other] = neighbours.get(other, 0.0) + weight */
static int add_weight(PyObject *neighbours, PyObject *other, PyObject *weight) {
    PyObject *now = PyDict_GetItemWithError(neighbours, other);
    if (now == NULL && PyErr_Occurred()) return -1;
    PyObject *sum;
    if (now != NULL && PyFloat_CheckExact(now) && PyFloat_CheckExact(weight))
        sum = PyFloat_FromDouble(PyFloat_AS_DOUBLE(now) + PyFloat_AS_DOUBLE(weight));
    else
        sum = PyNumber_Add(now == NULL ? zero_float : now, weight);
    if (sum == NULL) return -1;
    int rc = PyDict_SetItem(neighbours, other, sum);
    Py_DECREF(sum);
    return rc;
}

/* record[key] = value (a new reference, consumed) */
static int set_field(PyObject *record, PyObject *key, PyObject *value) {
    if (value == NULL) return -1;
    int rc = PyDict_SetItem(record, key, value);
    Py_DECREF(value);
    return rc;
}

/* count += 1; trend decayed to ts (never back in time), then += 1: models.cooccurrence.decayed */
static int count_interaction(PyObject *record, PyObject *ts, PyObject *half_life) {
    PyObject *count = PyDict_GetItemWithError(record, key_count);
    PyObject *trend = count ? PyDict_GetItemWithError(record, key_trend) : NULL;
    PyObject *at = trend ? PyDict_GetItemWithError(record, key_trend_t) : NULL;
    if (at == NULL) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_KeyError, "a record needs count, trend and trend_t");
        return -1;
    }
    if (set_field(record, key_count, PyNumber_Add(count, one)) < 0) return -1;
    Py_INCREF(trend);
    Py_INCREF(at);
    int later = PyObject_RichCompareBool(ts, at, Py_LE);
    PyObject *value = NULL;
    if (later == 1) {  /* now <= at: unchanged */
        value = trend;
        Py_INCREF(value);
    } else if (later == 0) {
        PyObject *elapsed = PyNumber_Subtract(ts, at);
        PyObject *halvings = elapsed ? PyNumber_TrueDivide(elapsed, half_life) : NULL;
        PyObject *factor = halvings ? PyNumber_Power(half, halvings, Py_None) : NULL;
        value = factor ? PyNumber_Multiply(trend, factor) : NULL;
        Py_XDECREF(elapsed);
        Py_XDECREF(halvings);
        Py_XDECREF(factor);
        if (value != NULL) {
            Py_DECREF(at);
            at = ts;
            Py_INCREF(at);
        }
    }
    Py_DECREF(trend);
    if (value == NULL) {
        Py_DECREF(at);
        return -1;
    }
    int rc = set_field(record, key_trend_t, at);  /* consumes at */
    if (rc == 0) rc = set_field(record, key_trend, PyNumber_Add(value, one));
    Py_DECREF(value);
    return rc;
}

/* the weight of distance ``step`` (decay ** step), borrowed; an error for anything but an int in range */
static PyObject *weight_at(PyObject *powers, PyObject *step) {
    if (!PyLong_Check(step)) {
        PyErr_Format(PyExc_TypeError, "a distance must be an integer, not %.50s", Py_TYPE(step)->tp_name);
        return NULL;
    }
    Py_ssize_t d = PyLong_AsSsize_t(step);
    if (d == -1 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError)) return NULL;
        PyErr_Clear();  /* an integer past 64 bits is as far outside the window as any */
        PyErr_Format(PyExc_ValueError, "a distance outside the window of %zd", PyTuple_GET_SIZE(powers));
        return NULL;
    }
    if (d < 0 || d >= PyTuple_GET_SIZE(powers)) {
        PyErr_Format(PyExc_ValueError, "a distance of %zd outside the window of %zd", d, PyTuple_GET_SIZE(powers));
        return NULL;
    }
    return PyTuple_GET_ITEM(powers, d);
}

/* a flat [id, d, id, d, ...] list, checked whole before anything is folded: ids are strings,
 * distances integers in the window */
static int check_pairs(PyObject *pairs, PyObject *powers, const char *what) {
    if (!PyList_CheckExact(pairs)) {
        PyErr_Format(PyExc_TypeError, "%s must be a list", what);
        return -1;
    }
    Py_ssize_t n = PyList_GET_SIZE(pairs);
    if (n % 2) {
        PyErr_Format(PyExc_ValueError, "%s must pair each id with a distance", what);
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i += 2) {
        if (!PyUnicode_CheckExact(PyList_GET_ITEM(pairs, i))) {
            PyErr_Format(PyExc_TypeError, "an item id in %s is not a string", what);
            return -1;
        }
        if (weight_at(powers, PyList_GET_ITEM(pairs, i + 1)) == NULL) return -1;
    }
    return 0;
}

static int fold_one(PyObject *folding, PyObject *open_state, PyObject *interaction, PyObject *powers,
                    PyObject *half_life) {
    if (!PyList_CheckExact(interaction) || PyList_GET_SIZE(interaction) != 6) {
        PyErr_SetString(PyExc_ValueError, "an interaction must be [source, offset, time, item, own, others]");
        return -1;
    }
    PyObject *offset = PyList_GET_ITEM(interaction, 1), *ts = PyList_GET_ITEM(interaction, 2);
    PyObject *item = PyList_GET_ITEM(interaction, 3), *own = PyList_GET_ITEM(interaction, 4);
    PyObject *others = PyList_GET_ITEM(interaction, 5);
    if (!PyLong_CheckExact(offset) || !(PyFloat_CheckExact(ts) || PyLong_CheckExact(ts)) || !PyUnicode_CheckExact(item)) {
        PyErr_SetString(PyExc_TypeError, "an interaction's offset must be an integer, its time a number, its item a string");
        return -1;
    }
    if ((own != Py_None && check_pairs(own, powers, "own pairs") < 0) || check_pairs(others, powers, "other pairs") < 0)
        return -1;
    PyObject *source = PyObject_Str(PyList_GET_ITEM(interaction, 0));
    if (source == NULL) return -1;
    PyUnicode_InternInPlace(&source);
    item = canonical(item);
    int rc = 0;
    if (own != Py_None) {
        PyObject *state = state_of(folding, open_state, item);
        PyObject *record = state ? PyList_GET_ITEM(state, 0) : NULL;
        int fresh = record ? take_offset(record, source, offset) : -1;
        if (fresh == 1) {
            PyObject *neighbours = dict_field(record, key_neighbours);
            if (neighbours == NULL) goto fail;
            for (Py_ssize_t i = 0; i < PyList_GET_SIZE(own); i += 2) {
                PyObject *other = canonical(PyList_GET_ITEM(own, i));
                int added = add_weight(neighbours, other, weight_at(powers, PyList_GET_ITEM(own, i + 1)));
                Py_DECREF(other);
                if (added < 0) goto fail;
            }
            if (count_interaction(record, ts, half_life) < 0) goto fail;
        }
        if (fresh < 0 || bump(state, fresh ? 1 : 2) < 0) goto fail;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(others); i += 2) {
        PyObject *other = canonical(PyList_GET_ITEM(others, i));
        PyObject *weight = weight_at(powers, PyList_GET_ITEM(others, i + 1));
        PyObject *state = state_of(folding, open_state, other);
        Py_DECREF(other);  /* folding keeps it where it opened the state */
        if (state == NULL) goto fail;
        PyObject *record = PyList_GET_ITEM(state, 0);
        int fresh = take_offset(record, source, offset);
        if (fresh == 1) {
            PyObject *neighbours = dict_field(record, key_neighbours);
            if (neighbours == NULL || add_weight(neighbours, item, weight) < 0) goto fail;
        }
        if (fresh < 0 || bump(state, fresh ? 1 : 2) < 0) goto fail;
    }
    goto done;
fail:
    rc = -1;
done:
    Py_DECREF(source);
    Py_DECREF(item);
    return rc;
}

/* a copy of a dict with its str keys interned, in the same order (dict's own copy when they are:
 * a record the fold wrote back keeps interned keys) */
static PyObject *interned_copy(PyObject *dict) {
    PyObject *key, *value;
    Py_ssize_t pos = 0;
    int all_interned = 1;
    while (all_interned && PyDict_Next(dict, &pos, &key, &value))
        all_interned = !PyUnicode_CheckExact(key) || PyUnicode_CHECK_INTERNED(key);
    if (all_interned) return PyDict_Copy(dict);
    PyObject *copy = _PyDict_NewPresized(PyDict_GET_SIZE(dict));
    pos = 0;
    while (copy != NULL && PyDict_Next(dict, &pos, &key, &value)) {
        key = canonical(key);
        if (PyDict_SetItem(copy, key, value) < 0) Py_CLEAR(copy);
        Py_DECREF(key);
    }
    return copy;
}

/* writable(record): models.cooccurrence.writable_python's copy of a stored record, with every id
 * interned (see canonical): records come from the table's JSON, whose keys are never interned.
 * None where the record is not a dict with dict neighbours and applied: the caller copies in
 * Python then (and raises as it does). */
static PyObject *writable(PyObject *self, PyObject *record) {
    (void)self;
    if (!PyDict_CheckExact(record)) Py_RETURN_NONE;
    PyObject *neighbours = PyDict_GetItemWithError(record, key_neighbours);
    PyObject *applied = neighbours ? PyDict_GetItemWithError(record, key_applied) : NULL;
    if (applied == NULL) {
        if (PyErr_Occurred()) return NULL;
        Py_RETURN_NONE;
    }
    if (!PyDict_CheckExact(neighbours) || !PyDict_CheckExact(applied)) Py_RETURN_NONE;
    PyObject *copy = PyDict_New(), *key, *value;
    Py_ssize_t pos = 0;
    while (copy != NULL && PyDict_Next(record, &pos, &key, &value)) {
        key = canonical(key);
        PyObject *field = key == key_neighbours ? interned_copy(value) : key == key_applied ? interned_copy(value) : value;
        if (field == NULL || PyDict_SetItem(copy, key, field) < 0) Py_CLEAR(copy);
        if (field != NULL && field != value) Py_DECREF(field);
        Py_DECREF(key);
    }
    return copy;
}

static PyObject *fold_pairs(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "fold_pairs(folding, open_state, pairs, powers, half_life)");
        return NULL;
    }
    PyObject *folding = args[0], *open_state = args[1], *pairs = args[2], *powers = args[3], *half_life = args[4];
    if (!PyDict_CheckExact(folding) || !PyTuple_CheckExact(powers) || !PyFloat_Check(half_life)) {
        PyErr_SetString(PyExc_TypeError, "fold_pairs needs a dict, a tuple of powers and a float half-life");
        return NULL;
    }
    if (!PyList_CheckExact(pairs)) {
        PyErr_SetString(PyExc_TypeError, "a message's pairs must be a list");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(pairs); i++) {
        PyObject *interaction = PyList_GET_ITEM(pairs, i);
        Py_INCREF(interaction);  /* open_state runs Python code; keep what is being folded alive */
        int rc = fold_one(folding, open_state, interaction, powers, half_life);
        Py_DECREF(interaction);
        if (rc < 0) return NULL;
    }
    Py_RETURN_NONE;
}

/* prune_neighbours(neighbours, keep): the ``keep`` heaviest as a new dict, heaviest first, ties by
 * id: what sorted(items, key=lambda kv: (-kv[1], kv[0]))[:keep] gives (ids are unique, so the
 * order is total and qsort's instability cannot show). None where an id is not a str or a weight
 * not a float: the caller sorts in Python then. */
typedef struct {
    double weight;
    PyObject *id, *value;  /* borrowed from the dict, which outlives the call */
} Neighbour;

static int heavier_first(const void *a, const void *b) {
    const Neighbour *x = a, *y = b;
    if (x->weight != y->weight) return x->weight > y->weight ? -1 : 1;
    return PyUnicode_Compare(x->id, y->id);  /* code point order, as Python's < on str */
}

static PyObject *prune_neighbours(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 2 || !PyDict_CheckExact(args[0]) || !PyLong_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "prune_neighbours(neighbours: dict, keep: int)");
        return NULL;
    }
    PyObject *neighbours = args[0];
    Py_ssize_t keep = PyLong_AsSsize_t(args[1]);
    if (keep == -1 && PyErr_Occurred()) return NULL;
    Py_ssize_t n = PyDict_GET_SIZE(neighbours), pos = 0, i = 0;
    Neighbour *all = PyMem_New(Neighbour, n > 0 ? n : 1);
    if (all == NULL) return PyErr_NoMemory();
    PyObject *id, *value;
    while (PyDict_Next(neighbours, &pos, &id, &value)) {
        if (!PyUnicode_CheckExact(id) || !PyFloat_CheckExact(value) || Py_IS_NAN(PyFloat_AS_DOUBLE(value))) {
            PyMem_Free(all);
            Py_RETURN_NONE;
        }
        all[i].weight = PyFloat_AS_DOUBLE(value);
        all[i].id = id;
        all[i].value = value;
        i++;
    }
    qsort(all, (size_t)n, sizeof(Neighbour), heavier_first);
    PyObject *kept = PyDict_New();
    for (i = 0; kept != NULL && i < n && i < keep; i++) {
        if (PyDict_SetItem(kept, all[i].id, all[i].value) < 0) Py_CLEAR(kept);
    }
    PyMem_Free(all);
    return kept;
}

/* cache[item], else key_partition(item, partitions) stored there: a new reference */
static PyObject *partition_of(PyObject *cache, PyObject *key_partition, PyObject *item, PyObject *partitions) {
    PyObject *partition = PyDict_GetItemWithError(cache, item);
    if (partition != NULL) {
        Py_INCREF(partition);
        return partition;
    }
    if (PyErr_Occurred()) return NULL;
    partition = PyObject_CallFunctionObjArgs(key_partition, item, partitions, NULL);
    if (partition != NULL && PyDict_SetItem(cache, item, partition) < 0) Py_CLEAR(partition);
    return partition;
}

/* [source, offset, ts, item, own, []]: a new reference; own is stolen (None borrowed) */
static PyObject *new_record(PyObject *const *head, PyObject *own) {
    PyObject *record = PyList_New(6);
    PyObject *others = PyList_New(0);
    if (record == NULL || others == NULL) {
        Py_XDECREF(record);
        Py_XDECREF(others);
        if (own != Py_None) Py_DECREF(own);
        return NULL;
    }
    for (int i = 0; i < 4; i++) {
        Py_INCREF(head[i]);
        PyList_SET_ITEM(record, i, head[i]);
    }
    if (own == Py_None) Py_INCREF(own);
    PyList_SET_ITEM(record, 4, own);
    PyList_SET_ITEM(record, 5, others);
    return record;
}

/* interaction_records(source, offset, ts, item, window, partitions, cache, key_partition):
 * models.cooccurrence.interaction_records_python with the partitions of ids looked up in
 * ``cache`` (filled from key_partition): the same records, built in the same order. */
static PyObject *interaction_records(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 8 || !PyList_CheckExact(args[4]) || !PyDict_CheckExact(args[6])) {
        PyErr_SetString(PyExc_TypeError,
                        "interaction_records(source, offset, ts, item, window: list, partitions, cache: dict, key_partition)");
        return NULL;
    }
    PyObject *item = args[3], *window = args[4], *partitions = args[5], *cache = args[6], *key_partition = args[7];
    PyObject *seen = PySet_New(NULL), *own = PyList_New(0), *out = NULL, *home = NULL, *result = NULL;
    if (seen == NULL || own == NULL || PySet_Add(seen, item) < 0) goto done;
    for (Py_ssize_t i = PyList_GET_SIZE(window) - 1, step = 0; i >= 0; i--, step++) {
        PyObject *other = PyList_GET_ITEM(window, i);
        int known = PySet_Contains(seen, other);
        if (known < 0) goto done;
        if (known) continue;
        PyObject *distance = PyLong_FromSsize_t(step);
        int failed = distance == NULL || PySet_Add(seen, other) < 0 || PyList_Append(own, other) < 0
                     || PyList_Append(own, distance) < 0;
        Py_XDECREF(distance);
        if (failed) goto done;
    }
    out = PyDict_New();
    home = partition_of(cache, key_partition, item, partitions);
    if (out == NULL || home == NULL) goto done;
    Py_INCREF(own);
    PyObject *record = new_record(args, own);
    if (record == NULL || PyDict_SetItem(out, home, record) < 0) {
        Py_XDECREF(record);
        goto done;
    }
    Py_DECREF(record);  /* out keeps it */
    for (Py_ssize_t j = 0; j < PyList_GET_SIZE(own); j += 2) {
        PyObject *other = PyList_GET_ITEM(own, j), *distance = PyList_GET_ITEM(own, j + 1);
        PyObject *target = partition_of(cache, key_partition, other, partitions);
        if (target == NULL) goto done;
        PyObject *target_record = PyDict_GetItemWithError(out, target);  /* borrowed */
        if (target_record == NULL) {
            if (PyErr_Occurred() || (target_record = new_record(args, Py_None)) == NULL) {
                Py_DECREF(target);
                goto done;
            }
            int rc = PyDict_SetItem(out, target, target_record);
            Py_DECREF(target_record);  /* out keeps it */
            if (rc < 0) {
                Py_DECREF(target);
                goto done;
            }
        }
        Py_DECREF(target);
        PyObject *others = PyList_GET_ITEM(target_record, 5);
        if (PyList_Append(others, other) < 0 || PyList_Append(others, distance) < 0) goto done;
    }
    result = Py_BuildValue("(On)", out, 1 + PyList_GET_SIZE(own) / 2);
done:
    Py_XDECREF(seen);
    Py_XDECREF(own);
    Py_XDECREF(out);
    Py_XDECREF(home);
    return result;
}

/* -- the item-pairs message in binary (models.cooccurrence.encode_pairs_python and
 * decode_pairs_python are the references) ------------------------------------------------------
 *
 * Why: parsing the JSON messages made a new string object for every id of every pair (some
 * twenty per interaction): 6.9% of an ingest worker's samples (bench/results/ingest_profile/
 * 9_turns_batches.json), more than anything but the fold itself. Here each id is written once per
 * message and decoded once, as one interned object that every pair then shares, so the fold's
 * lookups find it by pointer without interning it again.
 *
 * Layout, little-endian:
 *   header        "MMP1", f64 decay, u32 window, u32 ids, u32 interactions, u32 pairs   (28 bytes)
 *   id lengths    u32 per id (UTF-8 bytes), then the ids' UTF-8 bytes one after another
 *   interactions  i64 source, i64 offset, f64 time, u32 item (an id's index), i32 own pairs
 *                 (-1: None), u32 other pairs, u32 0                                   (40 bytes each)
 *   pairs         u32 id index, u32 distance (d - 1), each interaction's own pairs then its others'
 * decode_pairs gives {"pairs": [[source, offset, time, item, own | None, others], ...], "decay",
 * "window"}: what the JSON message parses to (pairs_message), so the fold and its checks are the
 * same; it raises ValueError on anything that is not such a message, to the last byte. */
#define PAIRS_MAGIC "MMP1"
#define HEADER_BYTES 28
#define ROW_BYTES 40

static void put_u32(char **at, uint32_t v) { memcpy(*at, &v, 4); *at += 4; }
static void put_i64(char **at, int64_t v) { memcpy(*at, &v, 8); *at += 8; }
static void put_f64(char **at, double v) { memcpy(*at, &v, 8); *at += 8; }

/* ids[id] -> its index, appending new ids to order; -1 on error (not a str) */
static long id_index(PyObject *ids, PyObject *order, PyObject *id) {
    if (!PyUnicode_CheckExact(id)) {
        PyErr_SetString(PyExc_TypeError, "an item id in an item-pairs record is not a string");
        return -1;
    }
    PyObject *known = PyDict_GetItemWithError(ids, id);
    if (known != NULL) return PyLong_AsLong(known);
    if (PyErr_Occurred()) return -1;
    PyObject *index = PyLong_FromSsize_t(PyList_GET_SIZE(order));
    int rc = index == NULL ? -1 : PyDict_SetItem(ids, id, index);
    Py_XDECREF(index);
    if (rc < 0 || PyList_Append(order, id) < 0) return -1;
    return (long)(PyList_GET_SIZE(order) - 1);
}

/* a flat [id, d, ...] list's pairs as (id index, distance) into *out, ids indexed as met; -1 on error */
static int index_pairs(PyObject *ids, PyObject *order, PyObject *pairs, uint32_t **out) {
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(pairs); i += 2) {
        long index = id_index(ids, order, PyList_GET_ITEM(pairs, i));
        PyObject *step = PyList_GET_ITEM(pairs, i + 1);
        if (index < 0) return -1;
        if (!PyLong_CheckExact(step)) {
            PyErr_SetString(PyExc_TypeError, "a distance must be an integer");
            return -1;
        }
        unsigned long d = PyLong_AsUnsignedLong(step);
        if (PyErr_Occurred() || d > UINT32_MAX) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_OverflowError, "a distance past 32 bits");
            return -1;
        }
        (*out)[0] = (uint32_t)index;
        (*out)[1] = (uint32_t)d;
        *out += 2;
    }
    return 0;
}

static int flat_pairs(PyObject *pairs) {
    if (PyList_CheckExact(pairs) && PyList_GET_SIZE(pairs) % 2 == 0) return 0;
    PyErr_SetString(PyExc_TypeError, "an item-pairs record's pairs must be a flat [id, distance, ...] list");
    return -1;
}

/* encode_pairs(records, decay, window) -> bytes: interaction_records' records as one message.
 * The records' shapes are checked and their pairs counted first; then one pass indexes the ids
 * (a dict lookup per pair) into a scratch array that is copied out as the message's pairs. */
static PyObject *encode_pairs(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 3 || !PyList_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "encode_pairs(records: list, decay, window)");
        return NULL;
    }
    PyObject *records = args[0];
    double decay = PyFloat_AsDouble(args[1]);
    unsigned long window = PyLong_AsUnsignedLong(args[2]);
    if (PyErr_Occurred()) return NULL;
    if (window > UINT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "a window past 32 bits");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(records), pairs = 0, id_bytes = 0;
    for (Py_ssize_t r = 0; r < n; r++) {
        PyObject *record = PyList_GET_ITEM(records, r);
        if (!PyList_CheckExact(record) || PyList_GET_SIZE(record) != 6 || !PyLong_CheckExact(PyList_GET_ITEM(record, 0))
            || !PyLong_CheckExact(PyList_GET_ITEM(record, 1)) || !PyFloat_CheckExact(PyList_GET_ITEM(record, 2))) {
            PyErr_SetString(PyExc_TypeError, "an item-pairs record must be [int source, int offset, float time, item, own, others]");
            return NULL;
        }
        PyObject *own = PyList_GET_ITEM(record, 4), *others = PyList_GET_ITEM(record, 5);
        if ((own != Py_None && flat_pairs(own) < 0) || flat_pairs(others) < 0) return NULL;
        pairs += (own == Py_None ? 0 : PyList_GET_SIZE(own) / 2) + PyList_GET_SIZE(others) / 2;
    }
    if (n > UINT32_MAX || pairs > UINT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "an item-pairs message past 32-bit counts");
        return NULL;
    }
    PyObject *ids = PyDict_New(), *order = PyList_New(0), *out = NULL;
    uint32_t *scratch = PyMem_Malloc(sizeof(uint32_t) * (2 * (size_t)pairs + 1)), *next = scratch;
    uint32_t *items = PyMem_Malloc(sizeof(uint32_t) * ((size_t)n + 1));
    if (ids == NULL || order == NULL || scratch == NULL || items == NULL) {
        if (!PyErr_Occurred()) PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t r = 0; r < n; r++) {
        PyObject *record = PyList_GET_ITEM(records, r), *own = PyList_GET_ITEM(record, 4);
        if ((own != Py_None && index_pairs(ids, order, own, &next) < 0)
            || index_pairs(ids, order, PyList_GET_ITEM(record, 5), &next) < 0)
            goto done;
        long item = id_index(ids, order, PyList_GET_ITEM(record, 3));
        if (item < 0) goto done;
        items[r] = (uint32_t)item;
    }
    Py_ssize_t n_ids = PyList_GET_SIZE(order);
    for (Py_ssize_t i = 0; i < n_ids; i++) {
        Py_ssize_t size;
        if (PyUnicode_AsUTF8AndSize(PyList_GET_ITEM(order, i), &size) == NULL) goto done;
        id_bytes += size;
    }
    if (n_ids > UINT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "an item-pairs message past 32-bit counts");
        goto done;
    }
    out = PyBytes_FromStringAndSize(NULL, HEADER_BYTES + 4 * n_ids + id_bytes + ROW_BYTES * n + 8 * pairs);
    if (out == NULL) goto done;
    char *at = PyBytes_AS_STRING(out);
    memcpy(at, PAIRS_MAGIC, 4);
    at += 4;
    put_f64(&at, decay);
    put_u32(&at, (uint32_t)window);
    put_u32(&at, (uint32_t)n_ids);
    put_u32(&at, (uint32_t)n);
    put_u32(&at, (uint32_t)pairs);
    for (Py_ssize_t i = 0; i < n_ids; i++) {
        Py_ssize_t size;
        PyUnicode_AsUTF8AndSize(PyList_GET_ITEM(order, i), &size);
        put_u32(&at, (uint32_t)size);
    }
    for (Py_ssize_t i = 0; i < n_ids; i++) {
        Py_ssize_t size;
        const char *utf8 = PyUnicode_AsUTF8AndSize(PyList_GET_ITEM(order, i), &size);
        memcpy(at, utf8, size);
        at += size;
    }
    for (Py_ssize_t r = 0; r < n; r++) {
        PyObject *record = PyList_GET_ITEM(records, r), *own = PyList_GET_ITEM(record, 4);
        long long source = PyLong_AsLongLong(PyList_GET_ITEM(record, 0));
        long long offset = PyLong_AsLongLong(PyList_GET_ITEM(record, 1));
        if (PyErr_Occurred()) {
            Py_CLEAR(out);
            goto done;
        }
        put_i64(&at, source);
        put_i64(&at, offset);
        put_f64(&at, PyFloat_AS_DOUBLE(PyList_GET_ITEM(record, 2)));
        put_u32(&at, items[r]);
        int32_t own_pairs = own == Py_None ? -1 : (int32_t)(PyList_GET_SIZE(own) / 2);
        memcpy(at, &own_pairs, 4);
        at += 4;
        put_u32(&at, (uint32_t)(PyList_GET_SIZE(PyList_GET_ITEM(record, 5)) / 2));
        put_u32(&at, 0);
    }
    for (Py_ssize_t i = 0; i < 2 * pairs; i++) put_u32(&at, scratch[i]);  /* little-endian, as every field */
done:
    Py_XDECREF(ids);
    Py_XDECREF(order);
    PyMem_Free(scratch);
    PyMem_Free(items);
    return out;
}

static uint32_t get_u32(const char *at) { uint32_t v; memcpy(&v, at, 4); return v; }
static int64_t get_i64(const char *at) { int64_t v; memcpy(&v, at, 8); return v; }
static double get_f64(const char *at) { double v; memcpy(&v, at, 8); return v; }

static PyObject *malformed(const char *what) {
    PyErr_Format(PyExc_ValueError, "not an item-pairs message: %s", what);
    return NULL;
}

/* count pairs from *next (of n) as a new flat [id, d, ...] list with the shared ids */
static PyObject *read_pairs(const char *pairs, Py_ssize_t *next, Py_ssize_t n, uint32_t count, PyObject *ids) {
    if (count > (uint64_t)(n - *next)) return malformed("more pairs named than the message holds");
    PyObject *list = PyList_New(2 * (Py_ssize_t)count);
    for (uint32_t i = 0; list != NULL && i < count; i++, (*next)++) {
        const char *pair = pairs + 8 * *next;
        uint32_t index = get_u32(pair);
        if (index >= (uint64_t)PyList_GET_SIZE(ids)) {
            Py_DECREF(list);
            return malformed("an id index outside the message's ids");
        }
        PyObject *id = PyList_GET_ITEM(ids, index), *step = PyLong_FromUnsignedLong(get_u32(pair + 4));
        if (step == NULL) Py_CLEAR(list);
        else {
            Py_INCREF(id);
            PyList_SET_ITEM(list, 2 * i, id);
            PyList_SET_ITEM(list, 2 * i + 1, step);
        }
    }
    return list;
}

/* decode_pairs(data) -> {"pairs", "decay", "window"}: see the layout above */
static PyObject *decode_pairs(PyObject *self, PyObject *data) {
    (void)self;
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) return NULL;
    const char *buf = view.buf;
    Py_ssize_t size = view.len;
    PyObject *ids = NULL, *interactions = NULL, *result = NULL;
    if (size < HEADER_BYTES || memcmp(buf, PAIRS_MAGIC, 4) != 0) {
        malformed("no item-pairs header");
        goto done;
    }
    double decay = get_f64(buf + 4);
    uint32_t window = get_u32(buf + 12), n_ids = get_u32(buf + 16), n = get_u32(buf + 20), n_pairs = get_u32(buf + 24);
    /* every count bounded by what is left before anything is allocated for it */
    Py_ssize_t at = HEADER_BYTES, left = size - HEADER_BYTES;
    if ((uint64_t)n_ids * 4 > (uint64_t)left) {
        malformed("more ids named than the message holds");
        goto done;
    }
    Py_ssize_t lengths = at, id_bytes = 0;
    at += 4 * (Py_ssize_t)n_ids;
    for (uint32_t i = 0; i < n_ids; i++) id_bytes += get_u32(buf + lengths + 4 * (Py_ssize_t)i);
    if ((uint64_t)id_bytes + (uint64_t)n * ROW_BYTES + (uint64_t)n_pairs * 8 != (uint64_t)(size - at)) {
        malformed("its lengths do not add up to its size");
        goto done;
    }
    ids = PyList_New(n_ids);
    for (uint32_t i = 0; ids != NULL && i < n_ids; i++) {
        Py_ssize_t length = get_u32(buf + lengths + 4 * (Py_ssize_t)i);
        PyObject *id = PyUnicode_DecodeUTF8(buf + at, length, "strict");
        if (id == NULL) {
            Py_CLEAR(ids);
            break;
        }
        PyUnicode_InternInPlace(&id);
        PyList_SET_ITEM(ids, i, id);
        at += length;
    }
    if (ids == NULL) goto done;
    const char *rows = buf + at, *pairs = rows + (Py_ssize_t)n * ROW_BYTES;
    Py_ssize_t next = 0;
    interactions = PyList_New(n);
    for (uint32_t r = 0; interactions != NULL && r < n; r++) {
        const char *row = rows + (Py_ssize_t)r * ROW_BYTES;
        uint32_t item = get_u32(row + 24), others_count = get_u32(row + 32);
        int32_t own_count;
        memcpy(&own_count, row + 28, 4);
        if (item >= n_ids || own_count < -1 || get_u32(row + 36) != 0) {
            malformed(item >= n_ids ? "an item index outside the message's ids" : "a malformed interaction");
            goto fail;
        }
        PyObject *own = own_count < 0 ? Py_NewRef(Py_None) : read_pairs(pairs, &next, n_pairs, (uint32_t)own_count, ids);
        PyObject *others = own == NULL ? NULL : read_pairs(pairs, &next, n_pairs, others_count, ids);
        PyObject *record = others == NULL ? NULL : PyList_New(6);
        PyObject *source = record ? PyLong_FromLongLong(get_i64(row)) : NULL;
        PyObject *offset = source ? PyLong_FromLongLong(get_i64(row + 8)) : NULL;
        PyObject *ts = offset ? PyFloat_FromDouble(get_f64(row + 16)) : NULL;
        if (ts == NULL) {
            Py_XDECREF(own);
            Py_XDECREF(others);
            Py_XDECREF(record);
            Py_XDECREF(source);
            Py_XDECREF(offset);
            goto fail;
        }
        PyObject *id = PyList_GET_ITEM(ids, item);
        Py_INCREF(id);
        PyList_SET_ITEM(record, 0, source);
        PyList_SET_ITEM(record, 1, offset);
        PyList_SET_ITEM(record, 2, ts);
        PyList_SET_ITEM(record, 3, id);
        PyList_SET_ITEM(record, 4, own);
        PyList_SET_ITEM(record, 5, others);
        PyList_SET_ITEM(interactions, r, record);
    }
    if (interactions == NULL) goto done;
    if (next != (Py_ssize_t)n_pairs) {
        malformed("pairs left over");
        goto fail;
    }
    result = Py_BuildValue("{s:O,s:d,s:I}", "pairs", interactions, "decay", decay, "window", window);
    goto done;
fail:
    Py_CLEAR(interactions);
done:
    Py_XDECREF(ids);
    Py_XDECREF(interactions);
    PyBuffer_Release(&view);
    return result;
}

static PyMethodDef methods[] = {
    {"interaction_records", (PyCFunction)(void (*)(void))interaction_records, METH_FASTCALL,
     "interaction_records(source, offset, ts, item, window, partitions, cache, key_partition): compiled"},
    {"prune_neighbours", (PyCFunction)(void (*)(void))prune_neighbours, METH_FASTCALL,
     "prune_neighbours(neighbours, keep): the keep heaviest, heaviest first, ties by id (None: not all str/float)"},
    {"writable", (PyCFunction)writable, METH_O,
     "writable(record): models.cooccurrence.writable_python's copy, ids interned (None: not dicts)"},
    {"fold_pairs", (PyCFunction)(void (*)(void))fold_pairs, METH_FASTCALL,
     "fold_pairs(folding, open_state, pairs, powers, half_life): models.cooccurrence.fold_pairs, compiled"},
    {"encode_pairs", (PyCFunction)(void (*)(void))encode_pairs, METH_FASTCALL,
     "encode_pairs(records, decay, window) -> bytes: models.cooccurrence.encode_pairs_python, compiled"},
    {"decode_pairs", (PyCFunction)decode_pairs, METH_O,
     "decode_pairs(data) -> {pairs, decay, window}: models.cooccurrence.decode_pairs_python, compiled"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, .m_name = "models._cooccurrence", .m_size = -1,
                                     .m_methods = methods};

PyMODINIT_FUNC PyInit__cooccurrence(void) {
    key_applied = PyUnicode_InternFromString("applied");
    key_neighbours = PyUnicode_InternFromString("neighbours");
    key_count = PyUnicode_InternFromString("count");
    key_trend = PyUnicode_InternFromString("trend");
    key_trend_t = PyUnicode_InternFromString("trend_t");
    minus_one = PyLong_FromLong(-1);
    one = PyLong_FromLong(1);
    zero_float = PyFloat_FromDouble(0.0);
    half = PyFloat_FromDouble(0.5);
    if (!key_applied || !key_neighbours || !key_count || !key_trend || !key_trend_t || !minus_one || !one
        || !zero_float || !half)
        return NULL;
    return PyModule_Create(&module);
}
