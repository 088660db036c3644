"""Process-wide interpreter settings a scan changes while it runs, and restores after.

The one place that touches the garbage collector's thresholds: the scan engine
(:func:`scanner.pipeline.run`) and the writer (:meth:`scanner.store.writer.Writer.run`) both
allocate millions of short-lived containers, and at CPython's default first threshold (2,000
allocations) the collector ran thousands of times per million results, each pass also walking
the long-lived caches (5 s of a 30 s writer benchmark; ~3-5 % of a scan's CPU).
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

SCAN_GC_FIRST_THRESHOLD = 50_000


@contextlib.contextmanager
def gc_threshold(first: int | None = SCAN_GC_FIRST_THRESHOLD, *,
                 freeze: bool = False) -> Iterator[None]:
    """Raise the first GC threshold to at least ``first`` (None: leave it) for the block.

    ``freeze`` also moves every object alive on entry (modules, configuration) out of the
    collector's sight for the block. Nesting is safe: each block restores what it found.
    """
    before = gc.get_threshold()
    if first is not None and first > before[0]:
        gc.set_threshold(first, *before[1:])
    if freeze:
        gc.freeze()
    try:
        yield
    finally:
        if freeze:
            gc.unfreeze()
        gc.set_threshold(*before)
