"""The testbed's mail servers: one trio process serving every SMTP endpoint of a world.

Run as ``python -m testbed.smtpd SPEC.json`` (SPEC.json = ``testbed.spec.to_json(SmtpSpec)``):
it binds a listener per endpoint, prints ``ready`` and serves until SIGTERM, appending one JSON
line per session to ``spec.session_log``. What each endpoint says is `testbed.smtpbehaviours`.
More listeners than one process has descriptors for are served by child processes
(`testbed.smtpshards`), behind the same pid, the same ``ready`` and the same log.
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import json
import os
import resource
import signal
import socket
import ssl
import sys
import warnings
from collections.abc import Awaitable, Callable, Sequence
from functools import partial

import trio

from testbed import smtpshards
from testbed.smtpbehaviours import Endpoint, Record, Session, Settings, close, note_sni
from testbed.spec import Chain, SmtpEndpoint, SmtpSpec, read_delay, smtp_spec_from_json

BACKLOG = 65535  # the kernel caps it at net.core.somaxconn
FLUSH_INTERVAL = 0.5
FLUSH_LINES = 4096  # flush early when a burst fills the buffer
# Descriptors kept for sessions (and the log, the epoll set) on top of one per listener: a
# scan's connections in flight stay below its concurrency (2,000 by default).
SESSION_DESCRIPTORS = 4096
# accept() errors that mean "out of resources for now", not "this listener is broken".
_TRANSIENT_ACCEPT = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})

SniCallback = Callable[[ssl.SSLObject, str | None, ssl.SSLContext], int | None]


class BindError(OSError):
    """A listener could not be opened; the message names the address."""


class ChainError(ValueError):
    """A certificate chain of the spec could not be loaded; the message names the files."""


def _permissive_context() -> ssl.SSLContext:
    """A server that completes handshakes with old clients too (TLS 1.0 and weak ciphers):
    the scanner, not the server, must judge what was negotiated (RFC 7672 §8.1 lets SMTP
    clients accept any protocol version rather than fall back to cleartext)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    ctx.num_tickets = 0  # TLS 1.3 tickets cost CPU and no probe resumes
    return ctx


def _note_only(obj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
    note_sni(obj, name)


def _abort(obj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> int:
    """TLS_FAIL: a real handshake failure, the client receives a handshake_failure alert."""
    note_sni(obj, name)
    return ssl.ALERT_DESCRIPTION_HANDSHAKE_FAILURE


class TlsContexts:
    """One SSLContext per distinct chain, plus one SNI-switching front per distinct chain map."""

    def __init__(self) -> None:
        self._by_chain: dict[Chain, ssl.SSLContext] = {}
        self._fronts: dict[tuple[tuple[str, Chain], ...], ssl.SSLContext] = {}
        self.failing = _permissive_context()
        self.failing.sni_callback = _abort

    def for_chain(self, chain: Chain) -> ssl.SSLContext:
        ctx = self._by_chain.get(chain)
        if ctx is None:
            ctx = _load(chain)
            ctx.sni_callback = _note_only
            self._by_chain[chain] = ctx
        return ctx

    def front(self, chains: dict[str, Chain]) -> ssl.SSLContext | None:
        """The context an endpoint starts its handshakes with; None if it has no chain."""
        if not chains:
            return None
        default = chains.get("*") or next(iter(chains.values()))
        named = {sni.lower().rstrip("."): c for sni, c in chains.items() if sni != "*"}
        if not named:
            return self.for_chain(default)
        key = tuple(sorted(chains.items(), key=lambda item: item[0]))
        ctx = self._fronts.get(key)
        if ctx is None:
            ctx = _load(default)
            table = {sni: self.for_chain(c) for sni, c in named.items()}
            ctx.sni_callback = _switcher(table)
            self._fronts[key] = ctx
        return ctx


def _load(chain: Chain) -> ssl.SSLContext:
    ctx = _permissive_context()
    try:
        ctx.load_cert_chain(chain.cert, chain.key)
    except (OSError, ssl.SSLError) as exc:
        raise ChainError(f"cannot load chain {chain.cert} / {chain.key}: {exc}") from exc
    return ctx


def _switcher(table: dict[str, ssl.SSLContext]) -> SniCallback:
    def switch(obj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        note_sni(obj, name)
        if name is not None:
            target = table.get(name.lower().rstrip("."))
            if target is not None:
                obj.context = target

    return switch


class SessionLog:
    """JSON lines, one per session, appended in batches by single write() calls on an O_APPEND
    descriptor, so lines are never interleaved with another writer's."""

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._lines: list[str] = []

    def add(self, record: Record) -> None:
        self._lines.append(json.dumps(record.as_dict(), separators=(",", ":")) + "\n")
        if len(self._lines) >= FLUSH_LINES:
            self.flush()

    def flush(self) -> None:
        if not self._lines:
            return
        data = memoryview("".join(self._lines).encode())
        self._lines.clear()
        while data:
            data = data[os.write(self._fd, data) :]

    async def run(self) -> None:
        while True:
            await trio.sleep(FLUSH_INTERVAL)
            self.flush()

    def close(self) -> None:
        self.flush()
        os.close(self._fd)


def raise_nofile_limit(needed: int = 0) -> int:
    """Raise the descriptor limit as far as allowed, past the hard limit if ``needed`` is
    larger and the process may (CAP_SYS_RESOURCE, up to fs.nr_open); returns the soft limit.

    A world has a listener per SMTP address (tens of thousands in a large one) plus a
    descriptor per open session, far more than the usual 1,024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1 << 30
    if hard != resource.RLIM_INFINITY and needed > hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, needed))
            return needed
        except (ValueError, OSError):
            pass  # not privileged: the hard limit it is
    target = (1 << 20) if hard == resource.RLIM_INFINITY else hard
    if soft >= target:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return soft  # keep the soft limit; accept() backs off on EMFILE
    return target


def check_descriptors(listeners: int) -> None:
    """BindError, before anything is bound, if the listeners and SESSION_DESCRIPTORS sessions
    cannot have a descriptor each (rather than EMFILE half-way through binding)."""
    needed = listeners + SESSION_DESCRIPTORS
    limit = raise_nofile_limit(needed)
    if limit < needed:
        raise BindError(
            f"{listeners} listeners and {SESSION_DESCRIPTORS} sessions need {needed} file "
            f"descriptors; the limit is {limit} (raise `ulimit -n`, or run a smaller world)"
        )


def _listen(endpoint: SmtpEndpoint) -> trio.SocketListener:
    address, port = endpoint.address, endpoint.port
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise BindError(f"[{address}]:{port}: not an IP address") from None
    if not ip.is_loopback:
        raise BindError(f"[{address}]:{port}: not a loopback address; the testbed stays on lo")
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((address, port))
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise BindError(f"cannot listen on [{address}]:{port}: {exc.strerror or exc}") from exc
    return trio.SocketListener(trio.socket.from_stdlib_socket(sock))


def _listen_all(endpoints: list[Endpoint]) -> list[trio.SocketListener]:
    seen: set[tuple[str, int]] = set()
    listeners: list[trio.SocketListener] = []
    try:
        for ep in endpoints:
            where = (ep.spec.address, ep.spec.port)
            if where in seen:
                raise BindError(f"[{where[0]}]:{where[1]}: listed twice in the spec")
            seen.add(where)
            listeners.append(_listen(ep.spec))
    except BaseException:
        for listener in listeners:
            listener.socket.close()
        raise
    return listeners


async def _session(stream: trio.SocketStream, ep: Endpoint, log: SessionLog) -> None:
    record = Record(ep.spec.address, ep.spec.port, ep.spec.behaviour.value)
    session = Session(stream, ep, record)
    try:
        try:
            record.peer = stream.socket.getpeername()[0]
        except OSError:
            pass
        record.end = await session.run()
    except Exception as exc:
        # One broken session must not take the other thousands down with it.
        record.end = f"error:{type(exc).__name__}"
    finally:
        log.add(record)
        await close(session.stream)


async def _accept_loop(
    listener: trio.SocketListener, ep: Endpoint, log: SessionLog, nursery: trio.Nursery
) -> None:
    while True:
        try:
            stream = await listener.accept()
        except OSError as exc:
            if exc.errno not in _TRANSIENT_ACCEPT:
                raise
            await trio.sleep(0.1)  # out of descriptors: let sessions finish
            continue
        nursery.start_soon(_session, stream, ep, log)


async def serve(
    spec: SmtpSpec,
    *,
    idle_timeout: float = 60.0,
    handshake_timeout: float = 30.0,
    session_lifetime: float = 600.0,
    delay_file: str | None = None,
    hangup_also: Sequence[trio.Process] = (),
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serves every endpoint of ``spec`` until cancelled; ``started()`` once all are bound.
    A SIGHUP rereads ``delay_file`` and is passed on to the processes in ``hangup_also``.

    Raises `ChainError` or `BindError` (before ``started()``) if a chain cannot be loaded or a
    listener cannot be opened. On
    cancellation every open session is logged with ``end`` = "shutdown" and the log flushed.
    """
    check_descriptors(len(spec.endpoints))
    reply_delay = read_delay(delay_file, spec.reply_delay)
    settings = Settings(idle_timeout, handshake_timeout, session_lifetime, reply_delay)
    contexts = TlsContexts()
    endpoints = [
        Endpoint(e, contexts.front(e.chains), contexts.failing, settings) for e in spec.endpoints
    ]
    listeners = _listen_all(endpoints)
    log = SessionLog(spec.session_log)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(log.run)
            if delay_file:
                nursery.start_soon(_reload_on_hangup, settings, delay_file, hangup_also)
            for listener, ep in zip(listeners, endpoints, strict=True):
                nursery.start_soon(_accept_loop, listener, ep, log, nursery)
            task_status.started()
    finally:
        for listener in listeners:
            listener.socket.close()
        log.close()


async def _reload_on_hangup(
    settings: Settings, delay_file: str, also: Sequence[trio.Process]
) -> None:
    """SIGHUP: take the reply delay from ``delay_file`` again (`testbed.control.set_delay`)."""
    with trio.open_signal_receiver(signal.SIGHUP) as hangups:
        async for _ in hangups:
            settings.reply_delay = read_delay(delay_file, settings.reply_delay)
            for proc in also:
                if proc.returncode is None:
                    proc.send_signal(signal.SIGHUP)


async def _run(
    spec: SmtpSpec,
    idle_timeout: float,
    delay_file: str | None,
    children: list[list[str]],
    is_child: bool,
) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            procs: list[trio.Process] = []
            if children:
                procs = await nursery.start(smtpshards.run_children, children)
            await nursery.start(
                partial(
                    serve,
                    spec,
                    idle_timeout=idle_timeout,
                    delay_file=delay_file,
                    hangup_also=procs,
                )
            )
            print("ready", flush=True)
            if is_child:
                nursery.start_soon(_cancel_after, smtpshards.exit_with_parent, nursery)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


async def _cancel_after(wait: Callable[[], Awaitable[None]], nursery: trio.Nursery) -> None:
    await wait()
    nursery.cancel_scope.cancel()


def _sharded(
    spec: SmtpSpec, args: argparse.Namespace, argv: list[str]
) -> tuple[SmtpSpec, list[list[str]]]:
    """This process's endpoints, and the commands of the child shards it must start."""
    if args.shard:
        return smtpshards.shard(spec, *smtpshards.parse_shard(args.shard)), []
    per_process = args.listeners_per_process
    if per_process is None:
        per_process = raise_nofile_limit(len(spec.endpoints) + SESSION_DESCRIPTORS)
        per_process -= SESSION_DESCRIPTORS
    count = smtpshards.shard_count(len(spec.endpoints), per_process)
    base = [sys.executable, "-m", "testbed.smtpd", *argv]
    children = [[*base, "--shard", f"{i}/{count}"] for i in range(1, count)]
    return smtpshards.shard(spec, 0, count), children


def _leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside nested groups (each nursery wraps its own)."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testbed.smtpd", description=__doc__)
    parser.add_argument("spec", help="SmtpSpec as JSON (testbed.spec.to_json)")
    parser.add_argument("--idle-timeout", type=float, default=60.0)
    parser.add_argument("--delay-file", help="reply delay [low, high], read at start and on SIGHUP")
    parser.add_argument(
        "--listeners-per-process",
        type=int,
        default=None,
        help="listeners per process before children serve the rest (default: what the "
        "descriptor limit allows)",
    )
    parser.add_argument("--shard", help=argparse.SUPPRESS)  # I/K: a child started by its parent
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    with open(args.spec, encoding="utf-8") as fh:
        spec = smtp_spec_from_json(json.load(fh))
    failed: list[BaseException] = []
    try:
        mine, children = _sharded(spec, args, argv)
        trio.run(_run, mine, args.idle_timeout, args.delay_file, children, bool(args.shard))
    except* (BindError, ChainError, smtpshards.ShardError, ValueError) as group:
        failed.extend(_leaves(group))
    for exc in failed:
        print(f"testbed.smtpd: {exc}", file=sys.stderr)
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
