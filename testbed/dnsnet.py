"""Serve a testbed world's DNS on loopback: NSD per tier, fault servers, latency fronts, and a
validating Unbound whose only root is the world's own.

Layout under ``workdir``::

    dns/zones/<server>/<zone>.zone     signed zone texts
    dns/nsd-<server>/                  nsd.conf, nsd.log, pid/xfrd/zonelist files
    dns/fault-<server>.json|.log       testbed.faultdns (fault servers and latency fronts)
    dns/unbound/                       unbound.conf, root.hints, root.key, unbound.log
    dns/timings.json                   seconds spent signing, starting the servers, Unbound
    unbound.ctl                        Unbound's control socket (unix, no certificates)
    dns.pids                           every PID started, one a line
    fronts.pids                        the latency fronts among them
    delay.json                         the fronts' current delay, if changed (`control.set_delay`)
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode

from testbed import procs
from testbed.signing import sign_zones, trust_anchor
from testbed.spec import DELAY_FILE, DnsServer, WorldPlan, Zone

NSD = "/usr/sbin/nsd"
UNBOUND = "/usr/sbin/unbound"
UNBOUND_CONTROL = "/usr/sbin/unbound-control"
UNBOUND_CHECKCONF = "/usr/sbin/unbound-checkconf"
BACKEND_PORT = 10053  # where a server behind a latency front really listens (same address)
FRONTS_FILE = "fronts.pids"  # the latency fronts among dns.pids

# Names Unbound answers itself unless told not to (unbound.conf(5), "local-zone" defaults;
# RFC 6761 special-use names).
UNBOUND_DEFAULT_ZONES = ("localhost.", "test.", "invalid.", "onion.", "home.arpa.", "local.")


def start(
    plan: WorldPlan,
    workdir: Path,
    seed: int,
    *,
    unbound_options: Mapping[str, str] | None = None,
) -> list[int]:
    """Sign, write and serve every zone of ``plan``, then start Unbound on ``plan.resolver``.

    Returns the PIDs (also in ``workdir/dns.pids``) once every server answers. On failure
    everything already started is stopped and the error carries the daemon's log tail.
    ``unbound_options`` adds or overrides ``server:`` options (tests shorten timeouts)."""
    workdir = workdir.resolve()
    if _running(workdir):
        raise RuntimeError(f"DNS of {workdir} is already running; stop it first")
    base = workdir / "dns"
    base.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    texts = sign_zones(plan.zones, seed)
    timings["sign"] = time.monotonic() - t0
    t0 = time.monotonic()
    zone_files = _write_zones(plan, base, texts)
    timings["write"] = time.monotonic() - t0
    (workdir / "dns.pids").write_text("")
    (workdir / FRONTS_FILE).write_text("")
    pids: list[int] = []
    try:
        t0 = time.monotonic()
        checks: list[tuple[Callable[[], bool], int, str, Path, float]] = []
        for server in plan.servers:
            files = zone_files.get(server.name, [])
            checks += _start_server(server, files, base, workdir, pids)
        for ready, pid, what, log, timeout in checks:
            procs.wait_until(ready, pid, what, log, timeout)
        timings["authoritative"] = time.monotonic() - t0
        t0 = time.monotonic()
        _start_unbound(plan, seed, base / "unbound", workdir, unbound_options or {}, pids)
        timings["unbound"] = time.monotonic() - t0
    except BaseException:
        stop(workdir)
        raise
    (base / "timings.json").write_text(json.dumps(timings, indent=1) + "\n")
    return pids


def stop(workdir: Path) -> None:
    """Stop every process ``start`` recorded (SIGTERM, then SIGKILL after a few seconds)."""
    workdir = workdir.resolve()
    pid_file = workdir / "dns.pids"
    if not pid_file.exists():
        return
    pids = [int(line) for line in pid_file.read_text().split()]
    procs.terminate(pids, str(workdir))
    pid_file.unlink()
    (workdir / FRONTS_FILE).unlink(missing_ok=True)
    (workdir / "unbound.ctl").unlink(missing_ok=True)


def reload(plan: WorldPlan, workdir: Path, seed: int) -> list[int]:
    """A new night: stop everything and start afresh (re-signing; Unbound's caches start
    empty, as they would after `flush_resolver`)."""
    stop(workdir)
    return start(plan, workdir, seed)


def flush_resolver(workdir: Path) -> None:
    """Empty Unbound's caches: records, keys, bogus and negative entries, and the
    infrastructure cache that remembers dead servers (TESTBED-NOTES: flush between nights)."""
    conf = workdir.resolve() / "dns" / "unbound" / "unbound.conf"
    for command in (
        ["flush_zone", "."],
        ["flush_bogus"],
        ["flush_negative"],
        ["flush_infra", "all"],
        ["flush_requestlist"],
    ):
        done = subprocess.run(
            [UNBOUND_CONTROL, "-c", str(conf), *command], capture_output=True, text=True
        )
        if done.returncode != 0:
            raise RuntimeError(f"unbound-control {' '.join(command)}: {done.stdout}{done.stderr}")


def resolver_queries(workdir: Path) -> int:
    """Questions Unbound has received since it started or last reset its statistics
    (``total.num.queries``): cheap enough to sample twice a second during a scan."""
    stats = resolver_stats(workdir)
    if "total.num.queries" not in stats:
        raise RuntimeError("unbound: no total.num.queries in its statistics")
    return int(stats["total.num.queries"])


def resolver_stats(workdir: Path) -> dict[str, float]:
    """Unbound's ``stats_noreset`` (e.g. ``total.requestlist.exceeded``), read straight from
    its control socket (unbound-control would fork a process per sample)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(workdir.resolve() / "unbound.ctl"))
        sock.sendall(b"UBCT1 stats_noreset\n")
        chunks = []
        while chunk := sock.recv(1 << 16):
            chunks.append(chunk)
    out: dict[str, float] = {}
    for line in b"".join(chunks).decode("ascii", "replace").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            try:
                out[key] = float(value)
            except ValueError:
                continue
    return out


def stop_resolver(workdir: Path) -> None:
    """Stop the world's Unbound alone (an outage of the scanner's own resolver); the
    authoritative servers keep running. :func:`start_resolver` brings it back, caches empty."""
    workdir = workdir.resolve()
    procs.terminate(_unbound_pids(workdir), str(workdir / "dns" / "unbound" / "unbound.conf"))
    (workdir / "unbound.ctl").unlink(missing_ok=True)


def start_resolver(workdir: Path, resolver: str) -> int:
    """Start the world's Unbound again with the configuration it had; returns its PID once it
    answers on ``resolver``."""
    workdir = workdir.resolve()
    folder = workdir / "dns" / "unbound"
    pid_file = workdir / "dns.pids"
    dead = set(_unbound_pids(workdir, alive_only=False)) - set(_unbound_pids(workdir))
    kept = [p for p in pid_file.read_text().split() if int(p) not in dead]
    pid_file.write_text("".join(f"{p}\n" for p in kept))
    pid = procs.spawn([UNBOUND, "-d", "-c", str(folder / "unbound.conf")],
                      folder / "unbound.stderr", folder)
    _record(workdir, [], pid)
    procs.wait_until(_answers(resolver, 53, "."), pid, "unbound", folder / "unbound.log", 30.0)
    return pid


def _unbound_pids(workdir: Path, *, alive_only: bool = True) -> list[int]:
    """The recorded PIDs that are (or, with ``alive_only=False``, were) this world's Unbound:
    every other recorded PID is an authoritative server or a front, alive."""
    conf = str(workdir / "dns" / "unbound" / "unbound.conf")
    pids = [int(p) for p in (workdir / "dns.pids").read_text().split()]
    if alive_only:
        return [p for p in pids if procs.owned(p, conf)]
    return [p for p in pids if procs.owned(p, conf) or not procs.alive(p)]


# --- zones ----------------------------------------------------------------------------------


def _file_name(origin: str) -> str:
    return "root.zone" if origin == "." else f"{origin.rstrip('.').lower()}.zone"


def _write_zones(
    plan: WorldPlan, base: Path, texts: dict[str, str]
) -> dict[str, list[tuple[str, Path]]]:
    known = {s.name for s in plan.servers}
    for name in known:
        (base / "zones" / name).mkdir(parents=True, exist_ok=True)
    files: dict[str, list[tuple[str, Path]]] = {}
    for zone in plan.zones:
        if zone.server not in known:
            raise ValueError(f"zone {zone.origin} names unknown server {zone.server!r}")
        folder = base / "zones" / zone.server
        path = folder / _file_name(zone.origin)
        path.write_text(texts[zone.origin])
        files.setdefault(zone.server, []).append((zone.origin, path))
    return files


# --- authoritative servers ------------------------------------------------------------------


def _record(workdir: Path, pids: list[int], pid: int) -> None:
    pids.append(pid)
    with (workdir / "dns.pids").open("a") as out:
        out.write(f"{pid}\n")


def _start_server(
    server: DnsServer,
    files: list[tuple[str, Path]],
    base: Path,
    workdir: Path,
    pids: list[int],
) -> list[tuple[Callable[[], bool], int, str, Path, float]]:
    """Start one server (and its latency front); return the readiness checks to wait for."""
    fronted = server.delay != (0.0, 0.0)
    port = BACKEND_PORT if fronted else 53
    probe = files[0][0] if files else "."
    checks: list[tuple[Callable[[], bool], int, str, Path, float]] = []
    if server.fault is None:
        folder = base / f"nsd-{server.name}"
        folder.mkdir(parents=True, exist_ok=True)
        conf = folder / "nsd.conf"
        conf.write_text(_nsd_conf(server, port, files, folder))
        log = folder / "nsd.log"
        pid = procs.spawn([NSD, "-d", "-c", str(conf)], folder / "nsd.stderr", folder)
        _record(workdir, pids, pid)
        # NSD answers only once it has read every zone file: ~1 s per 10,000 small zones.
        timeout = 30.0 + len(files) / 2000
        checks.append(
            (_answers(server.address, port, probe), pid, f"nsd {server.name}", log, timeout)
        )
    else:
        ready = base / f"fault-{server.name}.ready"
        ready.unlink(missing_ok=True)
        config = {
            "mode": str(server.fault),
            "address": server.address,
            "port": port,
            "ready": str(ready),
            "zones": [[origin, str(path)] for origin, path in files],
        }
        pid, log = _start_faultdns(f"fault-{server.name}", config, base, workdir, pids)
        checks.append((ready.exists, pid, f"faultdns {server.name}", log, 30.0))
    if fronted:
        ready = base / f"front-{server.name}.ready"
        ready.unlink(missing_ok=True)
        config = {
            "mode": "front",
            "address": server.address,
            "port": 53,
            "ready": str(ready),
            "backend": [server.address, port],
            "delay": list(server.delay),
            "delay_file": str(workdir / DELAY_FILE),
        }
        pid, log = _start_faultdns(f"front-{server.name}", config, base, workdir, pids)
        with (workdir / FRONTS_FILE).open("a") as out:
            out.write(f"{pid}\n")  # `control.set_delay` signals these
        checks.append((ready.exists, pid, f"latency front {server.name}", log, 30.0))
    return checks


def _start_faultdns(
    name: str, config: dict[str, object], base: Path, workdir: Path, pids: list[int]
) -> tuple[int, Path]:
    conf = base / f"{name}.json"
    conf.write_text(json.dumps(config))
    log = base / f"{name}.log"
    pid = procs.spawn([sys.executable, "-m", "testbed.faultdns", str(conf)], log, _repo_root())
    _record(workdir, pids, pid)
    return pid, log


def _repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def _nsd_conf(server: DnsServer, port: int, files: list[tuple[str, Path]], folder: Path) -> str:
    v6 = ":" in server.address
    lines = [
        "server:",
        f"    ip-address: {server.address}@{port}",
        f"    port: {port}",
        f"    do-ip4: {'no' if v6 else 'yes'}",
        f"    do-ip6: {'yes' if v6 else 'no'}",
        '    username: ""',
        '    chroot: ""',
        '    database: ""',
        f'    zonesdir: "{folder}"',
        f'    zonelistfile: "{folder}/zone.list"',
        f'    xfrdfile: "{folder}/xfrd.state"',
        f'    xfrdir: "{folder}"',
        f'    pidfile: "{folder}/nsd.pid"',
        f'    logfile: "{folder}/nsd.log"',
        f'    identity: "{server.name}"',
        "    hide-version: yes",
        "    refuse-any: yes",
        "    server-count: 1",
        "    tcp-count: 512",
        # Bursts from the resolver (or a latency front) overflow the default 208 kB buffer.
        "    receive-buffer-size: 4194304",
        "    send-buffer-size: 4194304",
        # Response rate limiting (default 200/s per client /24) would throttle the resolver,
        # which is every authoritative server's only client here.
        "    rrl-ratelimit: 0",
        "    rrl-whitelist-ratelimit: 0",
        "    verbosity: 1",
        "remote-control:",
        "    control-enable: no",
    ]
    for origin, path in files:
        lines += ["zone:", f'    name: "{origin}"', f'    zonefile: "{path}"']
    return "\n".join(lines) + "\n"


def _answers(address: str, port: int, qname: str) -> Callable[[], bool]:
    """Readiness: the server gives any DNS answer (a query to an explicit loopback address)."""

    def check() -> bool:
        try:
            dns.query.udp(dns.message.make_query(qname, "SOA"), address, timeout=0.3, port=port)
        except (dns.exception.Timeout, OSError):
            return False
        return True

    return check


# --- Unbound --------------------------------------------------------------------------------


def _root_hints(zones: list[Zone]) -> str:
    root = next((z for z in zones if z.origin == "."), None)
    if root is None:
        raise ValueError("the world has no root zone")
    names = {r.rdata.lower() for r in root.records if r.owner == "." and r.rdtype.upper() == "NS"}
    lines = [f". 3600000 IN NS {name}" for name in sorted(names)]
    lines += [
        f"{r.owner} 3600000 IN {r.rdtype.upper()} {r.rdata}"
        for r in root.records
        if r.owner.lower() in names and r.rdtype.upper() in ("A", "AAAA")
    ]
    return "\n".join(lines) + "\n"


def _unbound_conf(
    plan: WorldPlan, folder: Path, workdir: Path, anchored: bool, extra: Mapping[str, str]
) -> str:
    v6 = ":" in plan.resolver
    options: dict[str, str] = {
        "username": '""',
        "chroot": '""',
        "directory": f'"{folder}"',
        "pidfile": f'"{folder}/unbound.pid"',
        "logfile": f'"{folder}/unbound.log"',
        "use-syslog": "no",
        "verbosity": "1",
        "interface": plan.resolver,
        "port": "53",
        "do-ip4": "yes",
        "do-ip6": "yes" if v6 else "no",  # the authoritative servers are IPv4 loopback
        "do-not-query-localhost": "no",  # every authoritative server is on 127/8
        "root-hints": f'"{folder}/root.hints"',  # replaces the built-in real-internet hints
        "module-config": '"validator iterator"',
        "ede": "yes",  # RFC 8914 Extended DNS Errors
        "val-log-level": "2",
        "val-bogus-ttl": "5",
        "infra-host-ttl": "60",
        "serve-expired": "no",
        "num-threads": "2",
        "so-reuseport": "yes",
        "msg-cache-size": "128m",
        "rrset-cache-size": "256m",
        "key-cache-size": "64m",
        "num-queries-per-thread": "4096",
        "so-rcvbuf": "8m",
        # The scanner is the only client and keeps thousands of queries in flight from one
        # address; the per-address wait limit (a DoS guard) would drop them.
        "wait-limit": "0",
        # A dead server is retried with a doubling timeout capped here (default 120 s, which
        # keeps a query to a DROP server pending for minutes); 2 s is still 4x the slowest
        # latency front.
        "infra-cache-max-rtt": "2000",
    }
    if not v6:
        options["outgoing-interface"] = plan.resolver
    if anchored:
        options["trust-anchor-file"] = f'"{folder}/root.key"'
    options.update(extra)
    lines = ["server:"] + [f"    {key}: {value}" for key, value in options.items()]
    lines += ["    access-control: 127.0.0.0/8 allow", "    access-control: ::1 allow"]
    origins = {z.origin.lower() for z in plan.zones}
    for special in UNBOUND_DEFAULT_ZONES:
        if any(o == special or o.endswith("." + special) for o in origins):
            lines.append(f'    local-zone: "{special}" nodefault')
    lines += [
        "remote-control:",
        "    control-enable: yes",
        f'    control-interface: "{workdir / "unbound.ctl"}"',
        "    control-use-cert: no",
    ]
    return "\n".join(lines) + "\n"


def _start_unbound(
    plan: WorldPlan,
    seed: int,
    folder: Path,
    workdir: Path,
    extra: Mapping[str, str],
    pids: list[int],
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    root = next((z for z in plan.zones if z.origin == "."), None)
    anchored = root is not None and root.signing is not None
    (folder / "root.hints").write_text(_root_hints(plan.zones))
    if anchored:
        (folder / "root.key").write_text(trust_anchor(plan.zones, seed))
    conf = folder / "unbound.conf"
    conf.write_text(_unbound_conf(plan, folder, workdir, anchored, extra))
    check = subprocess.run([UNBOUND_CHECKCONF, str(conf)], capture_output=True, text=True)
    if check.returncode != 0:
        raise RuntimeError(f"unbound-checkconf {conf}: {check.stdout}{check.stderr}")
    log = folder / "unbound.log"
    pid = procs.spawn([UNBOUND, "-d", "-c", str(conf)], folder / "unbound.stderr", folder)
    _record(workdir, pids, pid)
    procs.wait_until(_answers(plan.resolver, 53, "."), pid, "unbound", log, 30.0)
    if anchored:
        # The root SOA must validate: catches a wrong trust anchor or hints at start-up.
        query = dns.message.make_query(".", "SOA", want_dnssec=True)
        reply = dns.query.udp(query, plan.resolver, timeout=5.0)
        if reply.rcode() != dns.rcode.NOERROR or not reply.flags & dns.flags.AD:
            raise RuntimeError(
                f"unbound does not validate the root: {dns.rcode.to_text(reply.rcode())} "
                f"flags {dns.flags.to_text(reply.flags)}; {log}:\n{procs.log_tail(log)}"
            )


def _running(workdir: Path) -> bool:
    pid_file = workdir / "dns.pids"
    if not pid_file.exists():
        return False
    return any(procs.owned(int(p), str(workdir)) for p in pid_file.read_text().split())
