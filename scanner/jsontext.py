"""One JSON text encoder for everything the scanner writes as JSON (rows, JSON lines).

Built once and reused (``json.dumps`` builds a new one per call). Its text is
``json.dumps(obj, ensure_ascii=False)``'s; without the circular-reference check, since callers
pass plain lists and dicts built afresh from facts.
"""

from __future__ import annotations

import json

dumps = json.JSONEncoder(ensure_ascii=False, check_circular=False).encode
