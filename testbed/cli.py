"""`danescan testbed up|down|status`: the simulated mail internet from the command line."""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path

from testbed import control


def _delay(text: str) -> tuple[float, float]:
    lo, _, hi = text.partition(",")
    a, b = float(lo), float(hi or lo)
    if not 0 <= a <= b:
        raise argparse.ArgumentTypeError("--delay MIN,MAX with 0 <= MIN <= MAX seconds")
    return a, b


def _weights(text: str) -> dict[str, float]:
    """``name=w,name=w`` or a JSON object (or @file with either)."""
    if text.startswith("@"):
        text = Path(text[1:]).read_text()
    text = text.strip()
    if text.startswith("{"):
        return {k: float(v) for k, v in json.loads(text).items()}
    out: dict[str, float] = {}
    for part in filter(None, text.split(",")):
        k, _, v = part.partition("=")
        out[k.strip()] = float(v)
    return out


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    tb = subparsers.add_parser("testbed", help="a private DNSSEC + SMTP internet on loopback")
    sub = tb.add_subparsers(dest="testbed_command", required=True)

    u = sub.add_parser("up", help="build and start a world; writes domains.txt, manifest.jsonl")
    u.add_argument("--domains", type=int, required=True)
    u.add_argument("--seed", type=int, default=1)
    u.add_argument("--night", type=int, default=0, help="the same world K nights later")
    u.add_argument("--dir", type=Path, required=True)
    u.add_argument("--block", type=int, default=None, help="use 127.BLOCK.0.0/16")
    u.add_argument("--delay", type=_delay, default=(0.0, 0.0), metavar="MIN,MAX")
    u.add_argument("--ipv6", action="store_true", help="also serve MX hosts on [::1]:25")
    u.add_argument("--weights", type=_weights, default=None, metavar="NAME=W,...|JSON|@FILE")
    u.add_argument("--greeting-delay", type=float, default=1.5, help="tarpit banner delay")
    u.add_argument("--climb", type=float, default=0.05, help="share climbing a rung per night")
    u.add_argument("--regress", type=float, default=0.01, help="share regressing per night")
    u.set_defaults(func=_up)

    d = sub.add_parser("down", help="stop a world's servers and remove its directory")
    d.add_argument("--dir", type=Path, required=True)
    d.add_argument("--keep", action="store_true", help="keep the directory")
    d.set_defaults(func=_down)

    s = sub.add_parser("status", help="what runs for a world")
    s.add_argument("--dir", type=Path, required=True)
    s.set_defaults(func=_status)

    n = sub.add_parser("advance", help="move a running world to another night")
    n.add_argument("--dir", type=Path, required=True)
    n.add_argument("--night", type=int, required=True)
    n.set_defaults(func=_advance)

    lat = sub.add_parser(
        "delay", help="change the latency of a world built with --delay (0,0 keeps its fronts)"
    )
    lat.add_argument("--dir", type=Path, required=True)
    lat.add_argument("delay", type=_delay, metavar="MIN,MAX")
    lat.set_defaults(func=_set_delay)

    from testbed import demo

    p = subparsers.add_parser("demo", help="scan a simulated mail internet and print the funnel")
    demo.add_arguments(p)
    p.set_defaults(func=demo.main)


def _summary(w: control.World, seconds: float) -> None:
    print(f"resolver {w.resolver}")
    print(f"dir      {w.dir}")
    print(f"domains  {w.domains_file} ({len(w.manifest)} lines, night {w.night}, seed {w.seed})")
    print(f"manifest {w.dir / 'manifest.jsonl'}")
    print(f"up in    {seconds:.1f} s")
    for scenario, count in sorted(collections.Counter(m["scenario"] for m in w.manifest).items()):
        print(f"  {count:7d}  {scenario}")


def _up(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    w = control.up(
        args.dir,
        args.domains,
        args.seed,
        args.night,
        block=args.block,
        delay=args.delay,
        ipv6=args.ipv6,
        weights=args.weights,
        greeting_delay=args.greeting_delay,
        climb=args.climb,
        regress=args.regress,
    )
    _summary(w, time.monotonic() - t0)
    return 0


def _down(args: argparse.Namespace) -> int:
    control.down(args.dir, keep=args.keep)
    return 0


def _status(args: argparse.Namespace) -> int:
    try:
        state = control.status(args.dir)
    except FileNotFoundError:
        print(f"no world in {args.dir}", file=sys.stderr)
        return 1
    json.dump(state, sys.stdout, indent=1)
    print()
    return 0 if state["smtpd_alive"] else 1


def _set_delay(args: argparse.Namespace) -> int:
    try:
        control.set_delay(args.dir, args.delay)
    except (OSError, RuntimeError) as exc:
        print(f"danescan testbed delay: {exc}", file=sys.stderr)
        return 1
    return 0


def _advance(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    w = control.advance(control.load(args.dir), args.night)
    _summary(w, time.monotonic() - t0)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (``python -m testbed.cli testbed up ...``) until scanner.cli wires it."""
    parser = argparse.ArgumentParser(prog="danescan")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
