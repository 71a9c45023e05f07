"""Request ids: the one rule every transport uses to name a request (the `x-request-id` it
answers with, the id a handler's context is given, the access log's)."""

from __future__ import annotations

import random
import re
from collections.abc import Mapping

REQUEST_ID_HEADER = "x-request-id"
_CLIENT_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")
_VERSION_4 = (0x4000 << 64) | (0x8 << 60)  # a UUID's version (4) and variant (RFC 4122) bits
_NOT_VERSION = ~((0xF000 << 64) | (0xC << 60))


def request_id_of(headers: Mapping[str, str]) -> str:
    """The client's request id when it is a plain token of at most 128 characters, else a
    fresh one: a version 4 UUID, as TorchServe gives, from `random` (an id needs to be unique,
    not unguessable, and this takes a third of `uuid.uuid4()`'s time; the module reseeds
    itself in a forked child)."""
    given = headers.get(REQUEST_ID_HEADER)
    if given is not None and _CLIENT_REQUEST_ID.fullmatch(given):
        return given
    digits = "%032x" % ((random.getrandbits(128) & _NOT_VERSION) | _VERSION_4)
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"
