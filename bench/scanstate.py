"""Where a scan's domains wait, sampled while it runs: the DNS window, questions in flight and
queued for the window, domains per stage, collector time. For finding what bounds a phase.

    .venv/bin/python bench/scanstate.py OUT.tsv scan LIST --resolver IP --workers 1 ...

Runs ``danescan`` (the arguments after OUT) in this process, one worker, with counters
wrapped around the pipeline's stages (a measurement aid, never part of a scan: it changes
the code it measures) and a trio task writing one line every 0.25 s:

    t done window in_flight queued sent resent losses domains mx host endpoint probe gc_s

``mx``, ``host``: domains in the MX stage and host lookups in progress; ``endpoint``: waits
for an endpoint's facts (several domains can wait on one probe); ``probe``: SMTP probes
holding or waiting for their slots; ``gc_s``: seconds in the cyclic collector so far.
"""

from __future__ import annotations

import collections
import functools
import gc
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scanner import dns, pipeline  # noqa: E402
from scanner.cli import main  # noqa: E402

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

busy: collections.Counter[str] = collections.Counter()
clients: list[dns.DnsClient] = []
collector = [0.0, 0.0]  # (start of the running collection, seconds so far)


def counted(name: str, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        busy[name] += 1
        try:
            return await fn(*args, **kwargs)
        finally:
            busy[name] -= 1
    return wrapper


def on_gc(phase: str, _info: dict[str, Any]) -> None:
    if phase == "start":
        collector[0] = time.perf_counter()
    else:
        collector[1] += time.perf_counter() - collector[0]


def instrument(out: Path) -> None:
    pipeline.Scanner.scan_domain = counted("domains", pipeline.Scanner.scan_domain)  # type: ignore[method-assign]
    pipeline.mx_stage = counted("mx", pipeline.mx_stage)  # type: ignore[assignment]
    pipeline.host_stage = counted("host", pipeline.host_stage)  # type: ignore[assignment]
    pipeline.Scanner._endpoint = counted("endpoint", pipeline.Scanner._endpoint)  # type: ignore[method-assign]
    pipeline.Scanner._probe_once = counted("probe", pipeline.Scanner._probe_once)  # type: ignore[method-assign]
    gc.callbacks.append(on_gc)
    init = dns.DnsClient.__init__

    def remember(self: dns.DnsClient, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        clients.append(self)

    dns.DnsClient.__init__ = remember  # type: ignore[method-assign]
    run = pipeline.run

    async def sampled(scanner: pipeline.Scanner, items: Any, emit: Any) -> pipeline.ScanStats:
        async def sample() -> None:
            start = time.monotonic()
            with open(out, "w") as f:  # noqa: ASYNC230 (a line a quarter second)
                f.write("t\tdone\twindow\tin_flight\tqueued\tsent\tresent\tlosses\tdomains\tmx"
                        "\thost\tendpoint\tprobe\tgc_s\n")
                while True:
                    c = clients[-1]
                    w = c._window
                    f.write("\t".join(map(str, (
                        f"{time.monotonic() - start:.2f}", scanner.stats.domains, w.limit,
                        c._in_flight, len(c._room), c.stats.queries, c.stats.retries, w.losses,
                        busy["domains"], busy["mx"], busy["host"], busy["endpoint"],
                        busy["probe"], f"{collector[1]:.2f}"))) + "\n")
                    f.flush()
                    await trio.sleep(0.25)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sample)
            stats = await run(scanner, items, emit)
            nursery.cancel_scope.cancel()
        return stats

    pipeline.run = sampled


if __name__ == "__main__":
    instrument(Path(sys.argv[1]))
    sys.exit(main(sys.argv[2:]))
