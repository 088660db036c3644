"""One JSON text encoder for everything the scanner writes as JSON (rows, JSON lines).

``json.dumps`` builds a new encoder per call, more than half the cost for the small lists and
objects written here. CPython's C encoder is built once and reused; its output is
``json.dumps(obj, ensure_ascii=False)``'s (no circular-reference markers: callers pass plain
lists and dicts).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any


def _encoder() -> Callable[[Any], str]:
    make = getattr(json.encoder, "c_make_encoder", None)
    plain = json.JSONEncoder(ensure_ascii=False)
    if make is None:
        return plain.encode
    chunks = make(
        None, plain.default, json.encoder.encode_basestring, None, ": ", ", ", False, False, True
    )
    return lambda obj: "".join(chunks(obj, 0))


dumps = _encoder()
