"""Per-night rollups kept next to the archive, so a nightly report's cost follows the new night.

``DIR/rollups/<name>/night=YYYY-MM-DD/part-*.parquet`` and ``DIR/rollups/_rollups.json``:

- ``domain_counts``: domains per outcome and stage (``load.outcome_stage_counts`` of the night);
- ``host_counts``: MX hosts per reachability and stage (``load.host_stage_counts``);
- ``transitions``: domains per state at the previous night and this one;
- ``first_state``: per domain ever seen, the first night it had STARTTLS, a secure MX RRset
  and stage ``dane`` (the previous night's state plus this night);
- ``first_counts``: ``first_state`` counted per combination (what cohorts and lags read);
- ``matched``: every TLSA record that ever authenticated a domain's MX host (domain, host,
  record), the previous night's set plus this night's (what the stale-TLSA cause reads).

A night's rollups hold for the archive's chain of nights up to it (a hash of their scan ids,
``chain``): archiving or replacing an earlier night invalidates them, and readers then use the
raw archive (:meth:`analysis.engines.ArchiveSource.rollup`). :mod:`analysis.nightly` computes
them. This module only stores and finds them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from analysis.archive import Manifest

DIRECTORY = "rollups"
MANIFEST = "_rollups.json"
NAMES = (
    "domain_counts", "host_counts", "transitions", "first_state", "first_counts", "matched",
)  # fmt: skip


def chain(manifest: Manifest, night: dt.date) -> str:
    """The identity of the nights up to ``night``: the rollups computed from them."""
    ids = ",".join(str(manifest.nights[d].scan_id) for d in sorted(manifest.nights) if d <= night)
    return hashlib.sha256(ids.encode()).hexdigest()[:16]


def read(root: str | Path) -> dict[dt.date, dict[str, Any]]:
    """Night -> ``{"chain": ..., "files": {name: relative path}}`` (empty when none)."""
    path = Path(root) / DIRECTORY / MANIFEST
    if not path.exists():
        return {}
    body = json.loads(path.read_text(encoding="utf-8"))
    return {dt.date.fromisoformat(k): v for k, v in body.items()}


def valid(root: str | Path, manifest: Manifest) -> dict[dt.date, dict[str, str]]:
    """Night -> rollup files, for the nights whose rollups match the archive."""
    return {
        night: entry["files"]
        for night, entry in read(root).items()
        if night in manifest.nights and entry["chain"] == chain(manifest, night)
    }
