"""``danescan report``: the published CSVs, their data dictionary (README.md) and PNG charts.

Fixed column names and order (:data:`DICTIONARY`); deterministic: every table is sorted, so
one database gives byte-identical files; cells and quoting by :mod:`analysis.csvfile`, one
writer for every engine.
Charts use matplotlib's Agg canvas directly (no pyplot, no global backend switch).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import matplotlib.dates as mdates
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from analysis import engines, load, metrics
from analysis.csvfile import cell, write_csv

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from sqlalchemy.engine import Engine

    from analysis.catalog import ScanRef
    from analysis.engines import Source

DOMAIN_COLUMNS = (*load.DOMAIN_ROW_COLUMNS, "tld", "provider")

_STAGES = ", ".join(metrics.STAGES)
_SHARE = "float 0-1"


@dataclass(frozen=True, slots=True)
class Table:
    file: str
    about: str
    columns: tuple[tuple[str, str, str], ...]  # (name, type, meaning)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c[0] for c in self.columns)


def _c(name: str, kind: str, meaning: str) -> tuple[str, str, str]:
    return (name, kind, meaning)


SCAN = _c("scan_id", "int", "the scan (id in the danescan store)")
DATE = _c("logical_date", "date", "the scan's logical date (else the UTC day it started)")

DICTIONARY: tuple[Table, ...] = (
    Table(
        "funnel.csv",
        "Adoption funnel of the scan, in two labelled units.",
        (
            SCAN,
            DATE,
            _c(
                "unit",
                "text",
                "`domains` (domains, each once however often listed / ok domains, as the "
                "public survey counts) "
                "or `mx_hosts` (each MX host once per scan, as the 2020 paper counted records)",
            ),
            _c(
                "level",
                "text",
                "`outcome` (over all inputs / all MX hosts) or `stage` (over ok "
                "domains / reachable MX hosts)",
            ),
            _c(
                "value",
                "text",
                "the outcome (`ok`, `invalid`, ... ; hosts: `reachable`, "
                f"`unreachable`) or the stage ({_STAGES})",
            ),
            _c("rank", "int", "order of the value within its level"),
            _c("count", "int", "domains or hosts exactly at this value"),
            _c("denominator", "int", "domains, ok domains, MX hosts or reachable MX hosts"),
            _c("share", _SHARE, "count / denominator"),
            _c("reached", "int", "stage rows: at this rung or higher (empty for outcomes)"),
            _c("reached_share", _SHARE, "reached / denominator (empty for outcomes)"),
        ),
    ),
    *(
        Table(
            f"funnel_by_{by}.csv",
            f"Domain funnel per {what} (unit: domains).",
            (
                SCAN,
                DATE,
                _c("group_by", "text", f"`{by}`"),
                _c("group", "text", what_long),
                _c("inputs", "int", "domains in the group (each once; invalid lines one each)"),
                _c("ok", "int", "ok domains in the group"),
                _c("stage", "text", _STAGES),
                _c("rank", "int", "0 = plaintext ... 4 = dane"),
                _c("count", "int", "ok domains exactly at the stage"),
                _c("share", _SHARE, "count / ok"),
                _c("reached", "int", "ok domains at the stage or higher"),
                _c("reached_share", _SHARE, "reached / ok"),
            ),
        )
        for by, what, what_long in (
            ("tld", "TLD", "the domain's last label (empty: invalid input)"),
            (
                "provider",
                "mail provider",
                "registrable domain of the most-preferred MX host "
                "(Public Suffix List snapshot 2023-02-09, ICANN section; empty: no MX host)",
            ),
        )
    ),
    Table(
        "progression.csv",
        "Shares at each rung over every complete scan up to this one.",
        (
            SCAN,
            DATE,
            _c("unit", "text", "`domains` (ok domains) or `mx_hosts` (reachable MX hosts)"),
            _c("stage", "text", _STAGES),
            _c("rank", "int", "0 = plaintext ... 4 = dane"),
            _c("count", "int", "exactly at the stage"),
            _c("denominator", "int", "ok domains or reachable MX hosts"),
            _c("share", _SHARE, "count / denominator"),
            _c("reached", "int", "at the stage or higher"),
            _c("reached_share", _SHARE, "reached / denominator"),
        ),
    ),
    Table(
        "transitions.csv",
        "Domains by state at the previous scan (A) and this one (B); "
        "state = stage when ok, else the outcome; `absent` = not in that scan's input.",
        (
            _c("scan_a", "int", "the earlier scan"),
            _c("scan_b", "int", "this scan"),
            _c("from_state", "text", "state at A"),
            _c("to_state", "text", "state at B"),
            _c("count", "int", "domains"),
            _c("row_total", "int", "domains with from_state at A"),
            _c("row_share", _SHARE, "count / row_total"),
        ),
    ),
    Table(
        "movers.csv",
        "Domains whose ladder rank changed between A and B.",
        (
            _c("scan_a", "int", "the earlier scan"),
            _c("scan_b", "int", "this scan"),
            _c("domain", "text", "A-label domain"),
            _c("from_state", "text", "state at A"),
            _c("to_state", "text", "state at B"),
            _c("direction", "text", "`climbed` or `fell` (non-ok outcomes rank below plaintext)"),
            _c("steps", "int", "rank at B - rank at A"),
        ),
    ),
    Table(
        "cohorts.csv",
        "Signing cohorts: domains by the scan where their MX RRset was "
        "first secure, and how many of them reached DANE by this scan.",
        (
            _c("scan_id", "int", "first scan with a secure MX RRset"),
            _c("logical_date", "date", "its logical date"),
            _c("signed", "int", "domains in the cohort"),
            _c("reached_dane", "int", "of those, at stage dane in some scan"),
            _c("share_reached_dane", _SHARE, "reached_dane / signed"),
        ),
    ),
    Table(
        "dane_lags.csv",
        "For domains that reached DANE: scans (nights) between rungs.",
        (
            _c("from_rung", "text", "`starttls` or `dnssec`"),
            _c("to_rung", "text", "`dnssec` or `dane`"),
            _c("scans", "int", "scan positions between the first scan at each rung (0: same scan)"),
            _c("domains", "int", "domains with this lag"),
            _c("left_censored", "bool", "the earlier rung was held in the first scan already"),
        ),
    ),
    Table(
        "tlsa_parameters.csv",
        "TLSA records by usage, selector, matching type (RFC 6698).",
        (
            SCAN,
            _c("parameters", "text", "`usage selector mtype`, e.g. `3 1 1`"),
            _c("usage", "int", "certificate usage (2 DANE-TA, 3 DANE-EE, ...)"),
            _c("selector", "int", "0 full certificate, 1 SubjectPublicKeyInfo"),
            _c("mtype", "int", "0 full, 1 SHA2-256, 2 SHA2-512"),
            _c("records", "int", "TLSA records (unit: records, each MX host's RRset once)"),
            _c("record_share", _SHARE, "records / all TLSA records"),
            _c("hosts", "int", "MX hosts publishing such a record (unit: MX hosts)"),
            _c("host_share", _SHARE, "hosts / MX hosts publishing any TLSA record"),
        ),
    ),
    Table(
        "tlsa_rollover.csv",
        "Rollover readiness: MX hosts publishing more than one TLSA record (RFC 7671 §8.1).",
        (
            SCAN,
            _c("hosts_with_tlsa", "int", "MX hosts with at least one TLSA record"),
            _c("hosts_multiple", "int", "MX hosts with more than one"),
            _c("share_multiple", _SHARE, "hosts_multiple / hosts_with_tlsa"),
        ),
    ),
    Table(
        "breakage.csv",
        "DANE-broken domains and what changed since the previous scan.",
        (
            SCAN,
            _c("since_scan_id", "int", "the previous scan (empty: none)"),
            _c("domain", "text", "A-label domain"),
            _c("status", "text", "`newly_broken`, `still_broken`, `repaired`"),
            _c(
                "cause",
                "text",
                "`stale_tlsa` (TLSA matched the certificate of an earlier scan, "
                "certificate changed), `tlsa_no_match`, `bogus_dnssec`, `tlsa_lookup_failure`, "
                "`ta_name_mismatch`, `starttls_gone`, `handshake_error`, `other`; repaired rows: "
                "the cause at the previous scan",
            ),
            _c("reason", "text", "the verdict's reason (repaired rows: at the previous scan)"),
            _c("state", "text", "stage now, or the outcome when not ok"),
        ),
    ),
    Table(
        "domains.csv",
        "Per-domain results of the scan, in input order.",
        (
            _c("line", "int", "input line number"),
            _c("input", "text", "the line as given (formula-neutralised)"),
            _c("domain", "text", "A-label domain (empty: invalid)"),
            _c(
                "outcome",
                "text",
                "ok, invalid, excluded, nxdomain, no_mail, dns_failure, bogus, unreachable",
            ),
            _c("starttls", "bool", "ok only: every greeting endpoint completed STARTTLS"),
            _c("dnssec", "bool", "ok only: the MX RRset is secure"),
            _c("tlsa", "text", "`all`, `partial`, `none`: MX hosts with usable TLSA"),
            _c("tlsa_unusable", "bool", "some host publishes only unusable TLSA records"),
            _c("dane", "text", "`broken`, `valid`, `partial`, `none`"),
            _c("stage", "text", _STAGES),
            _c("reason", "text", "first failure reason (docs/verdicts.md)"),
            _c("mx_status", "text", "DNSSEC status of the MX lookup"),
            _c("implicit_mx", "bool", "no MX records: the domain is its own MX"),
            _c("primary_mx", "text", "the most-preferred MX host"),
            _c("tld", "text", "the domain's last label"),
            _c("provider", "text", "registrable domain of primary_mx (PSL snapshot)"),
        ),
    ),
)

CHARTS = (
    ("funnel.png", "share of ok domains and of reachable MX hosts at each rung or higher"),
    ("progression.png", "those shares over every complete scan (x: logical date)"),
    ("transitions.png", "previous scan -> this scan, row shares with counts"),
)


# --- per-domain rows ------------------------------------------------------------------------


def domain_batches(src: Source, scan_id: int) -> Iterator[pa.RecordBatch]:
    """``domains.csv`` as Arrow batches, streamed; TLD and provider added here (the PSL is
    not SQL: the engine joins the night's provider map where the archive keeps one)."""
    known = src.rollup_table("providers", scan_id)
    for batch in load.domain_batches(src, scan_id, known):
        if known is not None:
            provider = batch.column("provider")
        else:
            hosts = batch.column("primary_mx").cast(pa.string())
            distinct = pc.unique(hosts).drop_null()
            provider = pc.take(load.providers_for(distinct), pc.index_in(hosts, value_set=distinct))
        yield pa.RecordBatch.from_arrays(
            [
                *(batch.column(c) for c in load.DOMAIN_ROW_COLUMNS),
                pc.replace_substring_regex(batch.column("domain").cast(pa.string()), r"^.*\.", ""),
                provider,
            ],
            names=list(DOMAIN_COLUMNS),
        )


# --- charts ---------------------------------------------------------------------------------

_COLORS = {"domains": "#1f77b4", "mx_hosts": "#ff7f0e"}
_UNIT_LABEL = {"domains": "domains (share of ok domains)",
               "mx_hosts": "MX hosts (share of reachable MX hosts)"}  # fmt: skip


def funnel_chart(funnel: pd.DataFrame) -> Figure:
    """Grouped bars: share at each rung or higher, domains next to MX hosts."""
    fig = Figure(figsize=(9, 5.2), dpi=110)
    ax = fig.add_subplot()
    stages = list(metrics.STAGES)
    x = np.arange(len(stages))
    width = 0.38
    for k, unit in enumerate(metrics.UNITS):
        part = funnel[(funnel["unit"] == unit) & (funnel["level"] == "stage")]
        part = part.set_index("value").reindex(stages)
        shares = [float(v) * 100 if not pd.isna(v) else 0.0 for v in part["reached_share"]]
        counts = [0 if pd.isna(v) else int(v) for v in part["reached"]]
        den = part["denominator"].dropna()
        n = int(den.iloc[0]) if len(den) else 0
        bars = ax.bar(
            x + (k - 0.5) * width,
            shares,
            width,
            color=_COLORS[unit],
            label=f"{_UNIT_LABEL[unit]}, n = {n}",
        )
        for bar, c in zip(bars, counts, strict=True):
            ax.annotate(
                f"{c}",
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=8,
                xytext=(0, 2),
                textcoords="offset points",
            )
    ax.set_xticks(x, [f"{s}\n(or higher)" for s in stages])
    ax.set_ylim(0, 110)
    ax.set_ylabel("share at this rung or higher (%)")
    ax.set_xlabel("ladder rung (RFC 7672: STARTTLS → DNSSEC → TLSA → DANE)")
    _title(ax, "Adoption funnel", funnel)
    ax.legend(loc="upper right", fontsize=8, title="unit (bar labels: counts)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def _title(ax: Any, what: str, df: pd.DataFrame) -> None:
    if df.empty:
        ax.set_title(what)
        return
    sid, day = df["scan_id"].iloc[0], df["logical_date"].iloc[0]
    ax.set_title(f"{what} — scan {sid} ({cell(day) or 'undated'})")


def progression_chart(progression: pd.DataFrame) -> Figure:
    """Lines per rung over logical date; solid = domains, dashed = MX hosts."""
    fig = Figure(figsize=(9, 6.4), dpi=110)
    ax = fig.add_subplot()
    styles = {"domains": "-", "mx_hosts": "--"}
    colors = {"starttls": "#2ca02c", "dnssec": "#9467bd", "tlsa": "#8c564b", "dane": "#d62728"}
    for unit in metrics.UNITS:
        for stage, color in colors.items():
            part = progression[(progression["unit"] == unit) & (progression["stage"] == stage)]
            if part.empty:
                continue
            xs: list[Any] = list(part["logical_date"])
            ax.plot(
                xs,
                [float(v) * 100 for v in part["reached_share"]],
                styles[unit],
                color=color,
                marker="o",
                markersize=4,
                label=f"{stage} or higher — {'domains' if unit == 'domains' else 'MX hosts'}",
            )
    days = sorted({d for d in progression["logical_date"] if d is not None})
    if 0 < len(days) <= 16:  # one tick per scan while they fit; else matplotlib's locator
        ax.set_xticks(days)
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%Y-%m-%d"))  # type: ignore[no-untyped-call]
    ax.set_ylim(0, 105)
    ax.set_ylabel("share at this rung or higher (%)\n(domains: of ok; MX hosts: of reachable)")
    ax.set_xlabel("scan logical date")
    ax.set_title("Progression over scans")
    fig.autofmt_xdate()
    ax.grid(alpha=0.3)
    ax.legend(
        fontsize=8,
        ncol=2,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.22),
        title="rung — unit (solid: domains, dashed: MX hosts)",
        title_fontsize=8,
    )
    fig.tight_layout()
    return fig


def transitions_chart(transitions: pd.DataFrame) -> Figure:
    """Heat map of row shares (colour) with domain counts (text)."""
    fig = Figure(figsize=(8, 6.5), dpi=110)
    ax = fig.add_subplot()
    if transitions.empty:
        ax.text(0.5, 0.5, "no earlier complete scan to compare with", ha="center", va="center")
        ax.set_axis_off()
        return fig
    rows = list(dict.fromkeys(transitions["from_state"]))
    cols = list(dict.fromkeys(transitions["to_state"]))
    share = np.zeros((len(rows), len(cols)))
    count = np.zeros((len(rows), len(cols)), dtype=int)
    for r in transitions.itertuples(index=False, name=None):
        i, j = rows.index(str(r[2])), cols.index(str(r[3]))
        count[i, j], share[i, j] = int(r[4]), float(r[6])
    im = ax.imshow(share * 100, cmap="Blues", vmin=0, vmax=100, aspect="auto")
    for i in range(len(rows)):
        for j in range(len(cols)):
            if count[i, j]:
                ax.text(
                    j,
                    i,
                    str(count[i, j]),
                    ha="center",
                    va="center",
                    fontsize=9,
                    color="white" if share[i, j] > 0.6 else "black",
                )
    ax.set_xticks(range(len(cols)), cols, rotation=35, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    a, b = transitions["scan_a"].iloc[0], transitions["scan_b"].iloc[0]
    ax.set_ylabel(f"state at scan {a} (earlier)")
    ax.set_xlabel(f"state at scan {b}")
    ax.set_title("Transitions (cell text: domains)")
    fig.colorbar(im, ax=ax, label="share of the row (%)")
    fig.tight_layout()
    return fig


def save(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    fig.savefig(path, metadata={"Software": None})


# --- the report -----------------------------------------------------------------------------


def readme(scan_id: int, day: Any, counts: dict[str, int]) -> str:
    """The data dictionary: every file, every column, in file order."""
    out = [
        "# danescan report",
        "",
        f"Scan {scan_id}, logical date {cell(day) or 'none'}. Generated by `danescan report`;",
        "the same database gives byte-identical CSV files.",
        "",
        "Conventions: UTF-8, comma-separated, `\\n` line ends, header row; dates ISO 8601;",
        "booleans `true`/`false`; empty cell = null / not applicable; shares are fractions",
        "0-1 with six decimals. Text cells that begin with `=`, `+`, `-`, `@`, tab or CR are",
        "prefixed with `'` (spreadsheet formula injection); numbers are unchanged.",
        "",
        "Units: `domains` counts domains (a domain the list names on several lines once, each",
        "line that names no valid domain once) and ok domains, as the public survey does;",
        "`mx_hosts` counts each MX host once per scan (the 2020 paper counted records; the two",
        "disagreed by a factor of four). funnel.csv and progression.csv hold both, labelled in",
        "`unit`; tlsa_parameters.csv counts records and MX hosts, tlsa_rollover.csv MX hosts;",
        "every other table counts domains. domains.csv has one row per input line.",
        "",
    ]
    for t in DICTIONARY:
        out += [
            f"## {t.file}",
            "",
            f"{t.about} Rows: {counts.get(t.file, 0)}.",
            "",
            "| column | type | meaning |",
            "|---|---|---|",
        ]
        out += [f"| `{n}` | {k} | {m.replace('|', '/')} |" for n, k, m in t.columns]
        out.append("")
    out += ["## Charts", ""]
    out += [f"- `{name}`: {what}" for name, what in CHARTS]
    return "\n".join(out) + "\n"


def build(source: Source | Engine, out: Path, scan: ScanRef = "latest") -> dict[str, int]:
    """Write every CSV, README.md and the charts for ``scan`` (a complete scan) into ``out``;
    returns the row count per CSV. ``source``: the archive or the live store
    (:mod:`analysis.engines`); both give byte-identical CSVs for the same nights."""
    src = engines.as_source(source)
    sid = src.catalog.resolve(scan)
    out.mkdir(parents=True, exist_ok=True)
    earlier = src.catalog.earlier(sid)
    prev = earlier[-1] if earlier else None
    series: list[ScanRef] = [*earlier, sid]
    empty = {t.file: pd.DataFrame(columns=list(t.names)) for t in DICTIONARY}
    f = metrics.funnel(src, sid)
    prog = metrics.progression(src, series)
    trans = metrics.transitions(src, prev, sid) if prev else empty["transitions.csv"]
    frames: dict[str, Callable[[], pd.DataFrame]] = {
        "funnel.csv": lambda: f,
        "funnel_by_tld.csv": lambda: metrics.funnel_by(src, sid, "tld"),
        "funnel_by_provider.csv": lambda: metrics.funnel_by(src, sid, "provider"),
        "progression.csv": lambda: prog,
        "transitions.csv": lambda: trans,
        "movers.csv": lambda: metrics.movers(src, prev, sid) if prev else empty["movers.csv"],
        "cohorts.csv": lambda: metrics.cohorts(src, series),
        "dane_lags.csv": lambda: metrics.dane_lags(src, series),
        "tlsa_parameters.csv": lambda: metrics.tlsa_parameters(src, sid),
        "tlsa_rollover.csv": lambda: metrics.tlsa_rollover(src, sid),
        "breakage.csv": lambda: metrics.breakage(src, sid),
    }
    counts: dict[str, int] = {}
    for t in DICTIONARY:
        if t.file == "domains.csv":
            counts[t.file] = write_csv(out / t.file, t.names, domain_batches(src, sid))
        else:
            counts[t.file] = write_csv(out / t.file, t.names, [frames[t.file]()])
    day = f["logical_date"].iloc[0] if not f.empty else None
    (out / "README.md").write_text(readme(sid, day, counts), encoding="utf-8")
    save(funnel_chart(f), out / "funnel.png")
    save(progression_chart(prog), out / "progression.png")
    save(transitions_chart(trans), out / "transitions.png")
    return counts
