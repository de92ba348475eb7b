# Packs confluent-kafka messages into queue events for ``turbo_queue.kafka`` (value_format "record").
# cython: language_level=3, embedsignature=True, auto_pickle=False, autotestdict=False
"""Packs confluent-kafka messages into queue events for ``turbo_queue.kafka`` (value_format "record").

Each event is the msgpack array ``[value, key, headers, timestamp, topic, partition, offset]`` that
``turbo_queue.kafka.RECORDS`` reads with msgpack. Written here in one pass per message, because the
source spends most of its time per message on exactly this (see bench/kafka_bench.py): one size
computation, one bytes object, memcpy of value and key.

Integers are written as msgpack int64 (0xd3), which every msgpack reader accepts; the few bytes
lost to not using the shortest form are not worth a branch per field.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.ref cimport Py_INCREF
from cpython.tuple cimport PyTuple_New, PyTuple_SET_ITEM
from libc.stdint cimport int64_t, uint32_t, uint64_t
from libc.string cimport memcpy

cdef enum:
    NIL = 0xc0


cdef inline Py_ssize_t _bin_size(object b) except -1:
    cdef Py_ssize_t n
    if b is None:
        return 1
    n = PyBytes_GET_SIZE(<bytes?>b)
    return n + (2 if n < 0x100 else 3 if n < 0x10000 else 5)


cdef inline Py_ssize_t _str_size(bytes s):
    cdef Py_ssize_t n = PyBytes_GET_SIZE(s)
    return n + (1 if n < 32 else 2 if n < 0x100 else 3 if n < 0x10000 else 5)


cdef inline char* _be(char* p, uint64_t v, int width) noexcept:
    cdef int i
    for i in range(width):
        p[i] = <char>((v >> (8 * (width - 1 - i))) & 0xff)
    return p + width


cdef inline char* _w_sized(char* p, bytes data, unsigned char tag8) noexcept:
    """Length-prefixed bytes: tag8, tag8 + 1, tag8 + 2 announce 1-, 2- and 4-byte lengths (msgpack's
    bin 8/16/32 are 0xc4-0xc6, str 8/16/32 0xd9-0xdb)."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef int width = 1 if n < 0x100 else 2 if n < 0x10000 else 4
    p[0] = <char>(tag8 + (width >> 1))
    p = _be(p + 1, n, width)
    memcpy(p, PyBytes_AS_STRING(data), n)
    return p + n


cdef inline char* _w_bin(char* p, object b) noexcept:
    if b is None:
        p[0] = <char>NIL
        return p + 1
    return _w_sized(p, <bytes>b, 0xc4)


cdef inline char* _w_str(char* p, bytes s) noexcept:
    cdef Py_ssize_t n = PyBytes_GET_SIZE(s)
    if n >= 32:
        return _w_sized(p, s, 0xd9)
    p[0] = <char>(0xa0 | n)  # fixstr
    memcpy(p + 1, PyBytes_AS_STRING(s), n)
    return p + 1 + n


cdef inline char* _w_int(char* p, int64_t v) noexcept:
    p[0] = <char>0xd3
    return _be(p + 1, <uint64_t>v, 8)


cdef inline char* _w_array(char* p, Py_ssize_t n) noexcept:
    if n < 16:
        p[0] = <char>(0x90 | n)
        return p + 1
    if n < 0x10000:
        p[0] = <char>0xdc
        return _be(p + 1, n, 2)
    p[0] = <char>0xdd
    return _be(p + 1, n, 4)


cdef inline Py_ssize_t _array_size(Py_ssize_t n) noexcept:
    return 1 if n < 16 else 3 if n < 0x10000 else 5


def pack_messages(list msgs, list errors):
    """Pack every message of `msgs` without an error into a list of bytes; messages whose
    ``error()`` is set are appended to `errors` instead."""
    cdef list out = []
    cdef object last_topic = None
    cdef bytes topic_b = b""
    cdef list header_keys
    cdef Py_ssize_t size, i, nh
    cdef bytes b
    cdef char* p
    if not msgs:
        return out
    # The methods are taken from the type once and called unbound: no bound-method object per
    # call, which is a third of the cost of each call.
    cls = type(msgs[0])
    error_of, value_of, key_of, headers_of = cls.error, cls.value, cls.key, cls.headers
    timestamp_of, topic_of, partition_of, offset_of = cls.timestamp, cls.topic, cls.partition, cls.offset
    for m in msgs:
        if type(m) is not cls:
            raise TypeError(f"pack_messages: {type(m).__name__} among {cls.__name__} messages")
        if error_of(m) is not None:
            errors.append(m)
            continue
        value = value_of(m)
        key = key_of(m)
        headers = headers_of(m)
        kind, ts = timestamp_of(m)
        topic = topic_of(m)
        if topic != last_topic:
            last_topic = topic
            topic_b = (<str>topic).encode("utf-8")
        size = 1 + _bin_size(value) + _bin_size(key) + (1 if kind == 0 else 9) + _str_size(topic_b) + 18
        if headers is None:
            size += 1
        else:
            nh = len(headers)
            header_keys = [None] * nh
            size += _array_size(nh)
            for i in range(nh):
                hk, hv = headers[i]
                header_keys[i] = (<str>hk).encode("utf-8")
                size += 1 + _str_size(header_keys[i]) + _bin_size(hv)
        b = PyBytes_FromStringAndSize(NULL, size)
        p = PyBytes_AS_STRING(b)
        p[0] = <char>0x97  # fixarray of 7
        p = _w_bin(p + 1, value)
        p = _w_bin(p, key)
        if headers is None:
            p[0] = <char>NIL
            p += 1
        else:
            p = _w_array(p, nh)
            for i in range(nh):
                p[0] = <char>0x92
                p = _w_str(p + 1, <bytes>header_keys[i])
                p = _w_bin(p, headers[i][1])
        if kind == 0:  # TIMESTAMP_NOT_AVAILABLE
            p[0] = <char>NIL
            p += 1
        else:
            p = _w_int(p, ts)
        p = _w_str(p, topic_b)
        p = _w_int(p, partition_of(m))
        p = _w_int(p, offset_of(m))
        out.append(b)
    return out


# -- reading: the sink and the workers read records back

cdef inline uint64_t _be_read(const unsigned char* p, int width) noexcept:
    cdef uint64_t v = 0
    cdef int i
    for i in range(width):
        v = (v << 8) | p[i]
    return v


cdef object _read(const unsigned char** pp, const unsigned char* end, int depth):
    """One msgpack object of the kinds a record holds: nil, bool, int, bin, str, array (as a
    tuple). Anything else raises ValueError, and the caller falls back to msgpack itself."""
    cdef const unsigned char* p = pp[0]
    cdef unsigned char t
    cdef Py_ssize_t n = 0, i
    cdef int width = 0
    if p >= end or depth > 4:
        raise ValueError("truncated or too deep")
    t = p[0]
    p += 1
    if t <= 0x7f:
        pp[0] = p
        return <long>t
    if t >= 0xe0:
        pp[0] = p
        return <long>(<signed char>t)
    if t == 0xc0 or t == 0xc2 or t == 0xc3:
        pp[0] = p
        return None if t == 0xc0 else (t == 0xc3)
    if 0xcc <= t <= 0xcf:  # uint 8/16/32/64
        width = 1 << (t - 0xcc)
        if p + width > end:
            raise ValueError("truncated")
        pp[0] = p + width
        return _be_read(p, width)
    if 0xd0 <= t <= 0xd3:  # int 8/16/32/64
        width = 1 << (t - 0xd0)
        if p + width > end:
            raise ValueError("truncated")
        pp[0] = p + width
        if width == 1:
            return <long>(<signed char>p[0])
        if width == 2:
            return <long>(<short>_be_read(p, 2))
        if width == 4:
            return <long>(<int>_be_read(p, 4))
        return <int64_t>_be_read(p, 8)
    if 0xc4 <= t <= 0xc6 or 0xd9 <= t <= 0xdb or 0xa0 <= t <= 0xbf:  # bin / str
        if 0xa0 <= t <= 0xbf:
            n = t & 0x1f
        else:
            width = 1 << ((t - 0xc4) if t <= 0xc6 else (t - 0xd9))
            if p + width > end:
                raise ValueError("truncated")
            n = <Py_ssize_t>_be_read(p, width)
            p += width
        if n > end - p:
            raise ValueError("truncated")
        pp[0] = p + n
        if 0xc4 <= t <= 0xc6:
            return PyBytes_FromStringAndSize(<const char*>p, n)
        return (<const char*>p)[:n].decode("utf-8")
    if 0x90 <= t <= 0x9f or t == 0xdc or t == 0xdd:  # array
        if t <= 0x9f:
            n = t & 0x0f
        else:
            width = 2 if t == 0xdc else 4
            if p + width > end:
                raise ValueError("truncated")
            n = <Py_ssize_t>_be_read(p, width)
            p += width
        items = PyTuple_New(n)
        for i in range(n):
            item = _read(&p, end, depth + 1)
            Py_INCREF(item)
            PyTuple_SET_ITEM(items, i, item)
        pp[0] = p
        return items
    raise ValueError(f"msgpack type 0x{t:02x} is not part of a record")


cdef tuple _fields(bytes data):
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(data)
    cdef const unsigned char* end = p + PyBytes_GET_SIZE(data)
    fields = _read(&p, end, 0)
    if p != end or type(fields) is not tuple or len(<tuple>fields) != 7:
        raise ValueError("not a 7-field record")
    return <tuple>fields


def unpack_record(bytes data, record_type):
    """The record packed in `data`, as a `record_type` (a 7-field namedtuple); ValueError if
    `data` is not one this reader knows (the caller then asks msgpack)."""
    return tuple.__new__(record_type, _fields(data))


def produce_packed(produce, str topic, list packed, Py_ssize_t start, on_delivery, catch, list errors):
    """Produce packed records packed[start:] with `produce` (a Producer's produce), passing
    `on_delivery` unless it is None. Stops at the
    first BufferError (the client's queue is full) and returns that index, to be called again
    after a poll; returns len(packed) when all were handed over. A record that cannot be read, or
    whose produce() raises `catch`, is appended to `errors` as (index, exception) and skipped."""
    cdef Py_ssize_t i, n = len(packed)
    cdef const unsigned char* p
    cdef const unsigned char* end
    cdef bytes b
    for i in range(start, n):
        b = <bytes?>packed[i]
        p = <const unsigned char*>PyBytes_AS_STRING(b)
        end = p + PyBytes_GET_SIZE(b)
        try:
            # Only what is produced: value, key, headers, timestamp (not where it came from).
            if p == end or p[0] != 0x97:
                raise ValueError("not a 7-field record")
            p += 1
            value = _read(&p, end, 0)
            key = _read(&p, end, 0)
            headers = _read(&p, end, 0)
            ts = _read(&p, end, 0)
            if not ((value is None or type(value) is bytes) and (key is None or type(key) is bytes)
                    and (headers is None or type(headers) is tuple)
                    and (ts is None or type(ts) is int)):
                raise ValueError("the fields of a record have other types")
        except ValueError as e:
            errors.append((i, e))
            continue
        try:
            # Keywords only where needed: each one is parsed by produce() on every call.
            if on_delivery is not None:
                produce(topic, value, key, headers=list(headers) if headers else None,
                        timestamp=ts or 0, on_delivery=on_delivery)
            elif headers:
                produce(topic, value, key, headers=list(headers), timestamp=ts or 0)
            elif ts:
                produce(topic, value, key, timestamp=ts)
            else:
                produce(topic, value, key)
        except BufferError:
            return i
        except catch as e:
            errors.append((i, e))
    return n
