"""Interpreter tuning for the scan commands, applied by their entry point only (scanner.run).

Library code changes no process-wide state; a command that runs a whole scan in this process
opts in to two settings, each measured to pay (bench/RESULTS.md, "Interpreter settings"):
- a GIL switch interval of 0.5 ms, because the writer's committing thread waits on the
  database many times per transaction and must win the GIL back quickly from the row builder
  and the scan;
- a first GC threshold of 200,000 with the start-up objects frozen, because verdicts and rows
  are many short-lived containers without cycles, which the default threshold would scan
  over and over.
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
