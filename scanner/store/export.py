"""Export a stored scan as JSONL or CSV at domain, host or endpoint level.

Domain level is ``scan --jsonl`` exactly: the stored verdicts are rebuilt and serialised by the
same ``scanner.verdict.to_json``, plus two provenance keys, ``scan_id`` and ``schema_version``.
CSV flattens: no ``mx_hosts`` at domain level; host and endpoint levels have their own columns.
Every row of every level carries ``scan_id`` and ``schema_version``. Only a complete scan is
exported unless the caller allows otherwise; text cells of CSV never start a formula.
"""

from __future__ import annotations

import csv
import json
import os
from typing import TYPE_CHECKING, Any, Literal, TextIO

from scanner import codec, verdict
from scanner.csvcell import neutralise
from scanner.model import SCHEMA_VERSION, DomainVerdict, Outcome
from scanner.store.read import iter_verdicts
from scanner.store.scans import latest_complete, scan_status
from scanner.store.schema import ScanStatus

if TYPE_CHECKING:
    from collections.abc import Iterator

    from sqlalchemy.engine import Engine

Format = Literal["jsonl", "csv"]
Level = Literal["domain", "host", "endpoint"]

# Every row opens with its provenance and place (host and endpoint rows with the host's name);
# the rest are the facts' record fields (scanner.codec). A host field that shares a link
# field's name, and every DANE field, is prefixed with its table.
_PROVENANCE = ("scan_id", "schema_version")
_FRAME = (*_PROVENANCE, "line", "domain")
HOST_COLUMNS = (
    *_FRAME, "host", "ordinal", *codec.LINK_FIELDS,
    *(f"host_{f}" if f in codec.LINK_FIELDS else f for f in codec.HOST_FLAT_FIELDS),
)  # fmt: skip
ENDPOINT_COLUMNS = (
    *_FRAME, "host", *codec.ENDPOINT_FIELDS, *(f"dane_{f}" for f in codec.DANE_FIELDS),
)  # fmt: skip


class NotExportable(LookupError):
    """No such scan, or one that is not complete; the message is one line for the user."""


def resolve_scan(engine: Engine, scan: int | str, *, allow_incomplete: bool = False) -> int:
    """``"latest"`` -> the newest complete scan (:func:`latest_complete`); otherwise the id,
    which must name a complete scan unless ``allow_incomplete``: a running, interrupted,
    failed or incomplete scan lacks results, and an export must not pass for a whole night."""
    if scan == "latest":
        found = latest_complete(engine)
        if found is None:
            raise NotExportable("no complete scan in the database")
        return found
    scan_id = int(scan)
    status = scan_status(engine, scan_id)
    if status is None:
        raise NotExportable(f"no scan {scan_id}")
    if status is not ScanStatus.COMPLETE and not allow_incomplete:
        raise NotExportable(
            f"scan {scan_id} is {status.value}, not complete; "
            "export it anyway with --allow-incomplete"
        )
    return scan_id


def domain_rows(verdicts: Iterator[DomainVerdict], scan_id: int) -> Iterator[dict[str, Any]]:
    for v in verdicts:
        row = verdict.to_json(v)  # the serialiser of ``scan --jsonl``: the two cannot drift
        row.update(zip(_PROVENANCE, (scan_id, SCHEMA_VERSION), strict=True))
        yield row


def domain_csv_columns() -> list[str]:
    """The scalar fields of the contract, in its order (every field is always present)."""
    template = verdict.to_json(DomainVerdict(input="", domain=None, outcome=Outcome.INVALID))
    return [*(k for k, v in template.items() if not isinstance(v, list | dict)), *_PROVENANCE]


def host_rows(verdicts: Iterator[DomainVerdict], scan_id: int) -> Iterator[dict[str, Any]]:
    for v in verdicts:
        for i, hv in enumerate(v.hosts):
            values = (scan_id, SCHEMA_VERSION, v.line, v.domain, hv.host.name, i,
                      *codec.link_row(hv), *codec.host_flat(hv.host).values())
            yield dict(zip(HOST_COLUMNS, values, strict=True))


def endpoint_rows(verdicts: Iterator[DomainVerdict], scan_id: int) -> Iterator[dict[str, Any]]:
    for v in verdicts:
        for hv in v.hosts:
            for ep, m in zip(hv.endpoints, hv.dane, strict=False):
                record = codec.endpoint_json(ep, [codec.fingerprint(der) for der in ep.chain])
                dane = (x.hex() if isinstance(x, bytes) else x for x in codec.dane_row(m))
                values = (scan_id, SCHEMA_VERSION, v.line, v.domain, hv.host.name,
                          *record.values(), *dane)
                yield dict(zip(ENDPOINT_COLUMNS, values, strict=True))


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        value = " ".join(str(x) for x in value)  # addresses, EHLO keywords, fingerprints
    if isinstance(value, str):
        return neutralise(value)
    return value


def export(
    engine: Engine,
    scan: int | str,
    format: Format,
    level: Level,
    out: TextIO,
    *,
    allow_incomplete: bool = False,
) -> int:
    """Write scan ``scan`` (an id or ``"latest"``) to ``out``; returns the number of rows.

    A reader that stops early (``export … | head``) ends the export quietly: the rows
    written until then are counted.
    """
    scan_id = resolve_scan(engine, scan, allow_incomplete=allow_incomplete)
    verdicts = iter_verdicts(engine, scan_id)
    if level == "domain":
        rows = domain_rows(verdicts, scan_id)
        columns = domain_csv_columns() if format == "csv" else []
    elif level == "host":
        rows, columns = host_rows(verdicts, scan_id), list(HOST_COLUMNS)
    elif level == "endpoint":
        rows, columns = endpoint_rows(verdicts, scan_id), list(ENDPOINT_COLUMNS)
    else:
        raise ValueError(f"unknown level {level!r}")
    if format not in ("jsonl", "csv"):
        raise ValueError(f"unknown format {format!r}")
    n = 0
    try:
        if format == "jsonl":
            for row in rows:
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
                n += 1
        else:
            w = csv.writer(out, lineterminator="\n")
            w.writerow(columns)
            for row in rows:
                w.writerow([_csv_cell(row.get(c)) for c in columns])
                n += 1
        out.flush()
    except BrokenPipeError:
        _discard_rest(out)
    return n


def _discard_rest(out: TextIO) -> None:
    """The reader went away: point the descriptor at /dev/null, so the flush at close (and at
    interpreter exit) does not fail again (the Python docs' note on SIGPIPE)."""
    try:
        fd = out.fileno()
    except (OSError, ValueError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)
