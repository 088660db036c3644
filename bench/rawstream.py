"""The probe's raw-socket stream against trio's SocketStream: client CPU per SMTP-like session.

A server process (plain sockets, one thread per connection) greets and answers each line;
the client runs ``--parallel`` tasks, each opening ``--sessions`` connections in turn and
exchanging a greeting and four command/reply pairs, as a STARTTLS probe does before its
handshake. Reported: this process's CPU (user + system) per session for each stream kind,
alternating ``--rounds`` times. The justification ``scanner/rawstream.py`` cites.

    .venv/bin/python bench/rawstream.py --rounds 3
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import subprocess
import sys
import time

import trio

from scanner.rawstream import open_tcp

SERVER = r"""
import socket, sys, threading
ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("127.0.0.1", 0)); ls.listen(4096)
print(ls.getsockname()[1], flush=True)
def serve(c):
    with c:
        c.sendall(b"220 bench ESMTP\r\n")
        buf = b""
        while True:
            data = c.recv(4096)
            if not data:
                return
            buf += data
            while b"\r\n" in buf:
                line, buf = buf.split(b"\r\n", 1)
                c.sendall(b"221 bye\r\n" if line == b"QUIT" else b"250 ok\r\n")
while True:
    c, _ = ls.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""
COMMANDS = (b"EHLO bench.invalid\r\n", b"NOOP\r\n", b"NOOP\r\n", b"QUIT\r\n")


async def _line(stream: trio.abc.ReceiveStream) -> None:
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = await stream.receive_some(4096)
        if not chunk:
            raise ConnectionError("closed early")
        data += chunk


async def _session_raw(port: int) -> None:
    stream = await open_tcp("127.0.0.1", port, socket.AF_INET)
    async with stream:
        await _line(stream)
        for command in COMMANDS:
            await stream.send_all(command)
            await _line(stream)


async def _session_trio(port: int) -> None:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    await sock.connect(("127.0.0.1", port))
    stream = trio.SocketStream(sock)
    async with stream:
        await _line(stream)
        for command in COMMANDS:
            await stream.send_all(command)
            await _line(stream)


async def _run(kind: str, port: int, parallel: int, sessions: int) -> None:
    session = _session_raw if kind == "raw" else _session_trio

    async def client() -> None:
        for _ in range(sessions):
            await session(port)

    async with trio.open_nursery() as nursery:
        for _ in range(parallel):
            nursery.start_soon(client)


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parallel", type=int, default=100)
    ap.add_argument("--sessions", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    server = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        total = args.parallel * args.sessions
        trio.run(_run, "raw", port, 10, 5)  # warm-up: imports, first connections
        results: dict[str, list[float]] = {"raw": [], "trio": []}
        for _ in range(args.rounds):
            for kind in ("raw", "trio"):
                cpu, wall = _cpu(), time.monotonic()
                trio.run(_run, kind, port, args.parallel, args.sessions)
                cpu, wall = _cpu() - cpu, time.monotonic() - wall
                results[kind].append(cpu / total * 1e6)
                print(f"{kind:4} {total} sessions: {cpu / total * 1e6:6.1f} µs CPU/session, "
                      f"wall {wall:.2f} s")
        best = {k: min(v) for k, v in results.items()}
        load = os.getloadavg()[0]
        print(f"best: raw {best['raw']:.1f} µs, trio.SocketStream {best['trio']:.1f} µs per "
              f"session ({best['trio'] / best['raw']:.2f}x); load {load:.1f}")
    finally:
        server.kill()
        server.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
