"""Interpreter tuning for the scan commands, applied by their entry point only (scanner.run).

Library code changes no process-wide state; a command that runs a whole scan in this process
may opt in, because two settings measurably pay there (bench/RESULTS.md, "Writer" and
"Scanner CPU"):
- the GIL switch interval at 0.5 ms: the writer's committing thread waits on the database a
  dozen times per transaction and must then win the GIL back from the row builder and the
  scan; at the default 5 ms that cost a third of the writer's throughput;
- the cyclic GC's first threshold at 200,000 (and the start-up objects frozen): verdicts and
  rows are many short-lived containers without cycles, and at the default (2,000) the
  collector ran thousands of times per million results (5.2-5.6 s of a ~30 s writer run).
Both are restored when the block ends.
"""

from __future__ import annotations

import contextlib
import gc
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

SWITCH_INTERVAL = 0.0005
GC_FIRST_THRESHOLD = 200_000


@contextlib.contextmanager
def tuned_for_scanning() -> Iterator[None]:
    interval = sys.getswitchinterval()
    threshold = gc.get_threshold()
    sys.setswitchinterval(min(interval, SWITCH_INTERVAL))
    gc.set_threshold(max(threshold[0], GC_FIRST_THRESHOLD), *threshold[1:])
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
        sys.setswitchinterval(interval)
