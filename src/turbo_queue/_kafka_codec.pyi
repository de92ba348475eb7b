"""Types of src/turbo_queue/_kafka_codec.pyx."""

from typing import Any

def pack_messages(msgs: list[Any], errors: list[Any]) -> list[bytes]: ...
