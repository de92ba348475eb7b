# Serializers: how an event becomes the bytes stored in a batch and back. Adding one is one name in
# SERIALIZERS, one kind below, and a branch in _encode and _decode.
#
# The default "json" writes what the original package writes (json.dumps text) and reads what it reads,
# using orjson wherever orjson gives the same value back.

SERIALIZERS = ("json", "raw", "text", "pickle", "msgpack", "auto")

# The index of a serializer's name in SERIALIZERS; S_CUSTOM: an object with dumps()/loads().
cdef enum:
    S_JSON = 0
    S_RAW = 1
    S_TEXT = 2
    S_PICKLE = 3
    S_MSGPACK = 4
    S_AUTO = 5
    S_CUSTOM = 6

cdef object _orjson_dumps = orjson.dumps
cdef object _orjson_loads = orjson.loads
cdef object _std_dumps = _stdjson.dumps
cdef object _std_loads = _stdjson.loads
cdef object _pickle_dumps = _pickle.dumps
cdef object _pickle_loads = _pickle.loads
cdef object _msgpack_packb = None
cdef object _msgpack_unpackb = None


cdef bytes _json_encode(object value):
    # Only what orjson writes as json.dumps does goes to orjson (see _tq_json.h): anything else (an
    # Enum, a UUID, a subclass, NaN) to the standard library, which writes or refuses it as the
    # original package does.
    if not tq_json_plain(value):
        return _std_json_encode(value)
    try:
        return _orjson_dumps(value)
    except TypeError:
        # Integers beyond 64 bits, lone surrogates...: the standard library handles them as the
        # original does, or raises naming the type.
        return _std_json_encode(value)


cdef bytes _std_json_encode(object value):
    try:
        return (<str>_std_dumps(value)).encode("ascii")
    except Exception as e:  # TypeError, ValueError (circular), RecursionError (too deep), ...
        raise _encode_error("json", value, e) from e


cdef object _encode_error(str serializer, object value, object cause):
    return EncodeError(f"turbo_queue: a {type(value).__name__} cannot be encoded with serializer "
                       f"{serializer!r}: {type(cause).__name__}: {cause}", value_type=type(value))


cdef object _json_decode(bytes b):
    cdef const char *p = PyBytes_AS_STRING(b)
    cdef size_t n = <size_t>PyBytes_GET_SIZE(b)
    # orjson reads integers beyond 64 bits as floats; the standard library keeps them exact. Any run
    # of 19+ digits goes to the standard library (always correct, only slower).
    if tq_has_digit_run(p, n, 19):
        return _std_loads(b)
    try:
        return _orjson_loads(b)
    except ValueError:
        # NaN, Infinity, lone surrogates, deep nesting: as the standard library reads them.
        return _std_loads(b)


# "auto": JSON (orjson) for values that come back from it exactly as pickle would give them back:
# dicts with str keys, lists, str, 64-bit int, finite float, bool and None, nested at most
# AUTO_MAX_DEPTH deep, and no container twice (pickle keeps shared and recursive references, JSON
# would copy them). Anything else is pickled. Pickle's protocol 2+ output starts with 0x80, which no
# JSON text does, so a reader tells them apart by the first byte, and folders written with "pickle"
# read back unchanged. For a small dict event JSON costs about a third of pickle, both ways.
cdef enum:
    AUTO_MAX_DEPTH = 64


cdef bint _json_exact(object v, int depth, set seen) except -1:
    cdef type t = type(v)
    cdef int overflow = 0
    cdef Py_ssize_t pos = 0
    cdef PyObject *k
    cdef PyObject *x
    if t is str or t is bool or v is None:
        return True
    if t is int:
        PyLong_AsLongLongAndOverflow(v, &overflow)
        return overflow == 0
    if t is float:
        return isfinite(PyFloat_AS_DOUBLE(v))
    if (t is not dict and t is not list) or depth >= AUTO_MAX_DEPTH:
        return False
    if depth > 0:
        # `seen` holds every container above and beside this one (it is made, holding the top
        # one, when the first nested container is met): one met twice is shared or recursive.
        if id(v) in seen:
            return False
        seen.add(id(v))
    if t is dict:
        while PyDict_Next(v, &pos, &k, &x):
            if type(<object>k) is not str:
                return False
            if seen is None and (type(<object>x) is dict or type(<object>x) is list):
                seen = {id(v)}
            if not _json_exact(<object>x, depth + 1, seen):
                return False
        return True
    for item in <list>v:
        if seen is None and (type(item) is dict or type(item) is list):
            seen = {id(v)}
        if not _json_exact(item, depth + 1, seen):
            return False
    return True


cdef bytes _auto_encode(object value):
    if _json_exact(value, 0, None):
        try:
            return _orjson_dumps(value)
        except TypeError:  # a str with lone surrogates: not UTF-8, so pickle it
            pass
    return _pickle_encode(value)


cdef bytes _pickle_encode(object value):
    try:
        return _pickle_dumps(value, 5)
    except Exception as e:
        raise _encode_error("pickle", value, e) from e


cdef bytes _encode(int kind, object value, object custom):
    if kind == S_JSON:
        return _json_encode(value)
    if kind == S_RAW:
        if type(value) is bytes:
            return <bytes>value
        if isinstance(value, str):
            return (<str>value).encode("utf-8", "surrogatepass")
        if isinstance(value, (bytes, bytearray, memoryview)):
            return bytes(value)
        raise EncodeError(f"turbo_queue: serializer 'raw' takes bytes or str, not {type(value).__name__}",
                          value_type=type(value))
    if kind == S_TEXT:
        if isinstance(value, str):
            return (<str>value).encode("utf-8", "surrogatepass")
        raise EncodeError(f"turbo_queue: serializer 'text' takes str, not {type(value).__name__}",
                          value_type=type(value))
    if kind == S_AUTO:
        return _auto_encode(value)
    if kind == S_PICKLE:
        return _pickle_encode(value)
    if kind == S_MSGPACK:
        try:
            return _msgpack_packb(value)
        except Exception as e:  # TypeError, OverflowError (an int beyond 64 bits), ValueError, ...
            raise _encode_error("msgpack", value, e) from e
    try:
        out = custom.dumps(value)
    except Exception as e:
        raise _encode_error(repr(custom), value, e) from e
    if type(out) is not bytes:
        raise EncodeError(f"turbo_queue: {custom!r}.dumps() must return bytes, not {type(out).__name__}",
                          value_type=type(value))
    return <bytes>out


cdef object _decode(int kind, bytes b, object custom):
    if kind == S_JSON:
        return _json_decode(b)
    if kind == S_RAW:
        return b
    if kind == S_TEXT:
        return b.decode("utf-8", "surrogatepass")
    if kind == S_AUTO:
        if PyBytes_GET_SIZE(b) and <unsigned char>PyBytes_AS_STRING(b)[0] == 0x80:
            return _pickle_loads(b)
        return _json_decode(b)
    if kind == S_PICKLE:
        return _pickle_loads(b)
    if kind == S_MSGPACK:
        return _msgpack_unpackb(b, raw=False, strict_map_key=False)
    return custom.loads(b)


def decode_value(serializer, bytes value):
    """Decode one stored value with a serializer given by name or object (for tools)."""
    cdef int kind = _serializer_kind(serializer)
    return _decode(kind, value, serializer if kind == S_CUSTOM else None)


cdef int _serializer_kind(object serializer) except -1:
    global _msgpack_packb, _msgpack_unpackb
    if isinstance(serializer, str):
        if serializer == "msgpack" and _msgpack_packb is None:
            try:
                import msgpack
            except ImportError:
                raise ValueError("turbo_queue: serializer 'msgpack' needs the msgpack package: "
                                 "pip install 'turbo-queue[msgpack]'") from None
            _msgpack_packb = msgpack.packb
            _msgpack_unpackb = msgpack.unpackb
        try:
            return SERIALIZERS.index(serializer)
        except ValueError:
            pass
    elif callable(getattr(serializer, "dumps", None)) and callable(getattr(serializer, "loads", None)):
        return S_CUSTOM
    raise ValueError(f"turbo_queue: serializer must be one of {', '.join(SERIALIZERS)} or an object "
                     f"with dumps() and loads(), not {serializer!r}")


