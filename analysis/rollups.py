"""Per-night rollups kept next to the archive, so a nightly report's cost follows the new night.

``DIR/rollups/<name>/night=YYYY-MM-DD/part-*.parquet`` and ``DIR/rollups/_rollups.json``:

- ``domain_counts``: domains per outcome and stage (``load.outcome_stage_counts`` of the night);
- ``host_counts``: MX hosts per reachability and stage (``load.host_stage_counts``);
- ``transitions``: domains per state at the previous night and this one; ``movers``: the
  domains whose ladder rank changed between them;
- ``first_state``: per domain ever seen, the first night it had STARTTLS, a secure MX RRset
  and stage ``dane`` (the previous night's state plus this night);
- ``first_counts``: ``first_state`` counted per combination (what cohorts and lags read);
- ``matched``: every TLSA record that ever authenticated a domain's MX host (domain, host,
  record), the previous night's set plus this night's (what the stale-TLSA cause reads);
- ``tld_counts``, ``provider_counts``: domains per TLD / mail provider, outcome and stage
  (what ``funnel_by_*.csv`` reads);
- ``providers``: the mail provider of each of the night's most-preferred MX hosts, the
  previous night's map plus the PSL for hosts new tonight (what ``domains.csv`` reads);
- ``broken``: the night's DANE-broken domains with the stale-TLSA flag (against the previous
  night's ``matched``), and ``repaired``: those broken the previous night and not tonight
  (what ``breakage.csv`` reads).

A night's rollups hold for the archive's chain of nights up to it (a hash of their scan ids
and of the PSL snapshot, ``chain``): archiving or replacing an earlier night, or another PSL
snapshot, invalidates them, and readers then use the raw archive
(:meth:`analysis.engines.ArchiveSource.rollup`). :mod:`analysis.nightly` computes them. This
module only stores and finds them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from analysis import psl

if TYPE_CHECKING:
    from analysis.archive import Manifest

DIRECTORY = "rollups"
MANIFEST = "_rollups.json"
NAMES = (
    "domain_counts", "host_counts", "transitions", "first_state", "first_counts", "matched",
    "tld_counts", "provider_counts", "providers", "broken", "repaired", "movers",
)  # fmt: skip


def chain(manifest: Manifest, night: dt.date) -> str:
    """The identity of the nights up to ``night``: the rollups computed from them."""
    ids = ",".join(str(manifest.nights[d].scan_id) for d in sorted(manifest.nights) if d <= night)
    return hashlib.sha256(f"{ids};psl={psl.identity()}".encode()).hexdigest()[:16]


def current(entry: dict[str, Any] | None, key: str) -> bool:
    """A night's entry holds every rollup of this version for this chain."""
    return entry is not None and entry["chain"] == key and set(NAMES) <= set(entry["files"])


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
