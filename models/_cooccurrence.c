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

static PyMethodDef methods[] = {
    {"interaction_records", (PyCFunction)(void (*)(void))interaction_records, METH_FASTCALL,
     "interaction_records(source, offset, ts, item, window, partitions, cache, key_partition): compiled"},
    {"prune_neighbours", (PyCFunction)(void (*)(void))prune_neighbours, METH_FASTCALL,
     "prune_neighbours(neighbours, keep): the keep heaviest, heaviest first, ties by id (None: not all str/float)"},
    {"writable", (PyCFunction)writable, METH_O,
     "writable(record): models.cooccurrence.writable_python's copy, ids interned (None: not dicts)"},
    {"fold_pairs", (PyCFunction)(void (*)(void))fold_pairs, METH_FASTCALL,
     "fold_pairs(folding, open_state, pairs, powers, half_life): models.cooccurrence.fold_pairs, compiled"},
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
