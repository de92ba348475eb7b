"""Every serializer gives back exactly what was put, whatever the event."""

import json
from contextlib import closing
import math
import pickle

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import turbo_queue

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

numeric_text = st.from_regex(r"\A\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*\Z", fullmatch=True)
any_text = st.text() | numeric_text | st.sampled_from(["", "0", "0123", "1e5", " 42", "null", "NaN"])
json_scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-2**200, max_value=2**200)
                | st.floats(allow_nan=True, allow_infinity=True) | any_text)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=6) | st.tuples(inner, inner)
    | st.dictionaries(any_text | st.integers() | st.booleans() | st.none(), inner, max_size=6),
    max_leaves=25,
)
FALSY = [{}, [], 0, 0.0, "", False, None]


def same(a, b):
    """Equality where NaN equals NaN and types must match."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def roundtrip(tmp_path, values, serializer, per_file=7):
    with turbo_queue.enqueue(root_path=str(tmp_path), queue_name="rt", serializer=serializer,
                             max_events_per_file=per_file) as e:
        e.add_many(values)
    out = []
    with turbo_queue.dequeue(root_path=str(tmp_path), queue_name="rt", serializer=serializer,
                             wait_timeout=0) as d:
        while True:
            got = d.get_batch()
            if not got:
                break
            out.extend(got)
    return out


@SETTINGS
@given(values=st.lists(json_values, max_size=20))
def test_json_matches_the_original_semantics(tmp_path, values):
    # The original stores json.dumps(v) and hands back json.loads of it; so must we, exactly.
    expected = [json.loads(json.dumps(v)) for v in values]
    got = roundtrip(tmp_path, values + FALSY, "json")
    assert same(got, expected + FALSY)


@SETTINGS
@given(values=st.lists(st.binary(max_size=300) | st.binary(min_size=5000, max_size=70000), max_size=20))
def test_raw_bytes(tmp_path, values):
    assert same(roundtrip(tmp_path, values + [b""], "raw"), values + [b""])


@SETTINGS
@given(values=st.lists(any_text, max_size=20))
def test_raw_str_comes_back_as_utf8_bytes_and_text_as_str(tmp_path, values):
    assert same(roundtrip(tmp_path, values, "raw"), [v.encode("utf-8", "surrogatepass") for v in values])
    assert same(roundtrip(tmp_path, values, "text"), values)


picklable = st.recursive(
    json_scalars | st.binary() | st.complex_numbers(allow_nan=False) | st.decimals(allow_nan=False)
    | st.datetimes() | st.frozensets(st.integers()),
    lambda inner: st.lists(inner) | st.tuples(inner, inner) | st.sets(st.integers())
    | st.dictionaries(st.integers() | st.text(), inner),
    max_leaves=20,
)


@SETTINGS
@given(values=st.lists(picklable, max_size=15))
def test_pickle(tmp_path, values):
    got = roundtrip(tmp_path, values + FALSY, "pickle")
    assert pickle.dumps(got) == pickle.dumps(values + FALSY) or same(got, values + FALSY)


def pickle_roundtrip(values):
    return pickle.loads(pickle.dumps(values, 5))


@SETTINGS
@given(values=st.lists(picklable | json_values, max_size=15))
def test_auto_gives_back_what_pickle_gives_back(tmp_path, values):
    got = roundtrip(tmp_path, values + FALSY, "auto")
    assert same(got, pickle_roundtrip(values + FALSY))


class Point(tuple):
    pass


@pytest.mark.parametrize("value", [
    (1, 2), {"t": (1, 2)}, {1: "int key"}, {"n": 2**64}, {"f": math.inf}, {"f": math.nan},
    {"s": "\ud800"}, Point((1, 2)), {"sub": Point((3,))}, True, 1.0, -0.0, {"d": {"e": [None]}},
])
def test_auto_keeps_the_type_of_what_json_cannot_say(tmp_path, value):
    [got] = roundtrip(tmp_path, [value], "auto")
    assert same(got, pickle_roundtrip(value))


def test_auto_keeps_shared_and_recursive_containers(tmp_path):
    inner = [1, 2]
    shared = {"a": inner, "b": inner}
    looped = [0]
    looped.append(looped)
    nested = {"x": {"y": {}}, "z": []}
    got_shared, got_looped, got_nested = roundtrip(tmp_path, [shared, looped, nested], "auto")
    assert got_shared == shared and got_shared["a"] is got_shared["b"]
    assert got_looped[1] is got_looped
    assert got_nested == nested and got_nested["x"]["y"] is not got_nested["z"]


def stored(tmp_path, queue_name="rt"):
    import sqlite3
    [path] = sorted((tmp_path / queue_name).glob("ready_*.db"))
    with closing(sqlite3.connect(path)) as db:  # (with alone never closes)
        return [row[0] for row in db.execute("SELECT log_data FROM logs ORDER BY rowid")]


def test_auto_stores_plain_values_as_json_and_the_rest_pickled(tmp_path):
    event = {"id": 1, "host": "h", "ts": 1.5, "ok": True, "tags": ["a"], "none": None}
    with turbo_queue.enqueue(root_path=str(tmp_path), queue_name="rt", serializer="auto") as e:
        e.add_many([event, (1, 2)])
    plain, tupled = stored(tmp_path)
    assert json.loads(plain) == event
    assert tupled[:1] == b"\x80" and pickle.loads(tupled) == (1, 2)


def test_auto_reads_a_queue_written_with_pickle(tmp_path):
    values = [{"a": 1}, (1, 2), "x", 0]
    with turbo_queue.enqueue(root_path=str(tmp_path), queue_name="rt", serializer="pickle") as e:
        e.add_many(values)
    with turbo_queue.dequeue(root_path=str(tmp_path), queue_name="rt", serializer="auto",
                             wait_timeout=0) as d:
        assert same(d.get_batch(), values)


msgpackable = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2**63, max_value=2**64 - 1)
    | st.floats(allow_nan=False) | st.text() | st.binary(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text() | st.integers(min_value=0, max_value=99), inner, max_size=5),
    max_leaves=20,
)


@SETTINGS
@given(values=st.lists(msgpackable, max_size=15))
def test_msgpack(tmp_path, values):
    pytest.importorskip("msgpack")
    assert same(roundtrip(tmp_path, values + FALSY, "msgpack"), values + FALSY)


def test_large_events(tmp_path):
    big = {"blob": "é" * 3_000_000, "list": list(range(100_000))}
    assert roundtrip(tmp_path, [big, "small", big], "json") == [big, "small", big]


class Reverse:
    @staticmethod
    def dumps(v):
        return v[::-1].encode()

    @staticmethod
    def loads(b):
        return b.decode()[::-1]


def test_custom_serializer(tmp_path):
    assert roundtrip(tmp_path, ["abc", "", "xyz"], Reverse) == ["abc", "", "xyz"]


@pytest.mark.parametrize("serializer, bad", [
    ("json", object()), ("json", {1j: 1}), ("json", {"a": {1, 2}}), ("raw", 12), ("text", b"x"),
    ("pickle", lambda: 0), ("msgpack", object()), ("auto", lambda: 0), ("auto", {"a": lambda: 0}),
])
def test_unencodable_raises_typeerror_naming_the_type_and_writes_nothing(tmp_path, serializer, bad):
    e = turbo_queue.enqueue(root_path=str(tmp_path), queue_name="q", serializer=serializer)
    e.add("ok" if serializer != "raw" else b"ok")
    with pytest.raises(TypeError) as info:
        e.add(bad)
    inner = bad if not isinstance(bad, dict) else next(iter(bad.values()))
    assert type(inner).__name__ in str(info.value) or type(bad).__name__ in str(info.value) or "complex" in str(info.value)
    assert e.pending() == 1
    assert e.flush() == 1
    e.close()
