/* Which values orjson writes exactly as json.dumps does: a walk in C, because the "json"
 * serializer asks it of every event (PyDict_Next is most of its cost). Needs the GIL. */
#ifndef TQ_JSON_H
#define TQ_JSON_H

#include <Python.h>
#include <math.h>

/* orjson refuses deeper nesting; the standard library writes it. */
#define TQ_JSON_MAX_DEPTH 254

#define TQ_JSON_SCALAR(o, t) \
    ((t) == &PyUnicode_Type || (t) == &PyLong_Type || (t) == &PyBool_Type || (o) == Py_None)

/* 1 when `v` holds only exact dicts with str keys, lists, tuples, str, int, finite float, bool
 * and None; 0 for anything else (an Enum, a UUID, a subclass, NaN, a datetime...). Calls no
 * Python code, so nothing can change the containers while they are walked. */
static int tq_json_plain_at(PyObject *v, int depth) {
    PyTypeObject *t = Py_TYPE(v);
    PyObject *k, *x, **items;
    Py_ssize_t pos = 0, i, n;
    if (TQ_JSON_SCALAR(v, t)) return 1;
    if (t == &PyFloat_Type) return isfinite(PyFloat_AS_DOUBLE(v));
    if (depth >= TQ_JSON_MAX_DEPTH) return 0;
    if (t == &PyDict_Type) {
        while (PyDict_Next(v, &pos, &k, &x)) {
            if (Py_TYPE(k) != &PyUnicode_Type) return 0;
            if (!TQ_JSON_SCALAR(x, Py_TYPE(x)) && !tq_json_plain_at(x, depth + 1)) return 0;
        }
        return 1;
    }
    if (t == &PyList_Type || t == &PyTuple_Type) {
        n = PySequence_Fast_GET_SIZE(v);
        items = PySequence_Fast_ITEMS(v);
        for (i = 0; i < n; i++) {
            if (!TQ_JSON_SCALAR(items[i], Py_TYPE(items[i])) && !tq_json_plain_at(items[i], depth + 1))
                return 0;
        }
        return 1;
    }
    return 0;
}

static int tq_json_plain(PyObject *v) { return tq_json_plain_at(v, 0); }

#endif
