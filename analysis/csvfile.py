"""The report's CSV files: one writer for every table and every engine, at C speed.

Rules (the files are read by people in spreadsheets and by scripts):
- UTF-8 without BOM, ``\\n`` line ends, a header row; a cell is quoted exactly when Python's
  ``csv`` module (``QUOTE_MINIMAL``) would quote it: it holds ``,``, ``"``, ``\\n`` or ``\\r``,
  with ``"`` doubled (RFC 4180 §2);
- dates ISO 8601; booleans ``true``/``false``; empty cell for null; floats with six decimals;
- text cells beginning with ``=``, ``+``, ``-``, ``@``, tab or CR get a leading ``'``
  (:mod:`scanner.csvcell`); numbers are never touched.

:func:`cell` states the rules for one value; :func:`arrow_cells` applies them to a whole
column with Arrow compute kernels (texts, integers, booleans) and falls back to :func:`cell`
once per distinct value for anything else (floats, dates), so a table of millions of rows is
formatted and joined into lines without a Python call per row.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from scanner.csvcell import FORMULA_PREFIXES, neutralise

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from pathlib import Path

__all__ = ["FORMULA_PREFIXES", "arrow_cells", "cell", "cells", "write_csv"]

FLOAT_FORMAT = "{:.6f}"
_FORMULA_START = "^[" + re.escape("".join(FORMULA_PREFIXES)) + "]"
_NEEDS_QUOTES = '[",\\n\\r]'  # what makes csv.QUOTE_MINIMAL quote a field
_CHUNK = 100_000  # rows formatted at once

type Column = pd.Series | pa.Array | pa.ChunkedArray


def cell(value: Any) -> str:
    """One CSV cell's text (before quoting) by the rules in the module docstring."""
    if value is None or value is pd.NA or value is pd.NaT:
        return ""
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        f = float(value)
        if math.isnan(f):
            return ""
        text = FLOAT_FORMAT.format(f)
        return "0.000000" if text == "-0.000000" else text
    if isinstance(value, dt.datetime | dt.date | pd.Timestamp):
        return value.isoformat()
    return neutralise(str(value))


def cells(column: pd.Series) -> np.ndarray:
    """A column's cells as the file holds them (:func:`arrow_cells`)."""
    return np.asarray(arrow_cells(column).to_numpy(zero_copy_only=False), dtype=object)


_FORMULA_BYTES = np.frombuffer("".join(FORMULA_PREFIXES).encode("ascii"), dtype=np.uint8)
_QUOTE_BYTES = np.frombuffer(b'",\n\r', dtype=np.uint8)


def _bytes(text: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """The UTF-8 bytes a string array's values span, and each value's start in them."""
    offsets = np.frombuffer(text.buffers()[1], dtype=np.int32)
    offsets = offsets[text.offset : text.offset + len(text) + 1]
    data = text.buffers()[2]
    raw = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)
    return raw[offsets[0] : offsets[-1]], offsets[:-1] - offsets[0]


def _may_start_formula(text: pa.Array) -> bool:
    """False when no value begins with a formula prefix (a scan of first bytes; the prefixes
    are ASCII, so a first byte is a first character)."""
    raw, starts = _bytes(text)
    lengths = np.diff(np.append(starts, len(raw)))
    return bool(np.isin(raw[starts[lengths > 0]], _FORMULA_BYTES).any())


def _may_need_quotes(text: pa.Array) -> bool:
    """False when no value holds a byte that makes a field quoted (one scan of the bytes)."""
    return bool(np.isin(_bytes(text)[0], _QUOTE_BYTES).any())


def _text(text: pa.Array) -> pa.Array:
    if _may_start_formula(text):
        marked = pc.match_substring_regex(text, _FORMULA_START)
        text = pc.if_else(marked, pc.binary_join_element_wise("'", text, ""), text)
    return _quoted(pc.fill_null(text, ""))


def _by_value(values: Sequence[Any] | pd.Series, mixed: bool | None = None) -> pa.Array:
    """:func:`cell` once per distinct value (a column of few values, or of mixed types)."""
    column = values if isinstance(values, pd.Series) else pd.Series(values, dtype=object)
    if mixed is None:
        mixed = len(set(map(type, column.dropna()))) > 1
    if mixed:  # True == 1: distinct values of mixed types must not be merged
        return _quoted(pa.array([cell(v) for v in column], type=pa.string()))
    codes, uniques = pd.factorize(column, use_na_sentinel=True)
    formatted = np.array([*(cell(v) for v in uniques), ""], dtype=object)
    return _quoted(pa.array(formatted[codes], type=pa.string()))  # null's code -1: the ""


def _arrow(values: pa.Array) -> pa.Array:
    t = values.type
    if pa.types.is_dictionary(t):
        return _arrow(pc.dictionary_decode(values))
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return _text(values.cast(pa.string()))
    if pa.types.is_boolean(t):
        return pc.fill_null(pc.if_else(values, "true", "false"), "")
    if pa.types.is_integer(t):
        return pc.fill_null(values.cast(pa.string()), "")
    if pa.types.is_null(t):
        return pa.array([""] * len(values), type=pa.string())
    return _by_value(values.to_pylist())


def arrow_cells(column: Column) -> pa.Array:
    """A whole column's cells (Arrow strings, no nulls) by :func:`cell`, quoted where needed
    (only text can hold a quote, comma or line break)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if isinstance(column, pa.Array):
        return _arrow(column)
    if isinstance(column.dtype, pd.StringDtype):
        return _arrow(pa.array(column, from_pandas=True))
    if column.dtype == object:
        kinds = set(map(type, column.dropna()))
        if kinds in ({str}, {int}, {bool}):
            return _arrow(pa.array(column, from_pandas=True))
        return _by_value(column, len(kinds) > 1)
    if pd.api.types.is_bool_dtype(column.dtype) or pd.api.types.is_integer_dtype(column.dtype):
        return _arrow(pa.array(column, from_pandas=True))
    if pd.api.types.is_float_dtype(column.dtype):  # one format call per distinct value
        codes, uniques = pd.factorize(column, use_na_sentinel=True)
        formatted = np.array([*(cell(float(v)) for v in uniques), ""], dtype=object)
        return pa.array(formatted[codes], type=pa.string())
    return _by_value(list(column))


def _quoted(text: pa.Array) -> pa.Array:
    if not _may_need_quotes(text):
        return text
    needs = pc.match_substring_regex(text, _NEEDS_QUOTES)
    if not pc.any(needs).as_py():
        return text
    wrapped = pc.binary_join_element_wise('"', pc.replace_substring(text, '"', '""'), '"', "")
    return pc.if_else(needs, wrapped, text)


def _lines(columns: Sequence[pa.Array]) -> bytes | memoryview:
    """Rows of cell texts as CSV lines, each ending in ``\\n``, as one buffer."""
    joined = pc.binary_join_element_wise(*columns, ",")
    lines = pc.binary_join_element_wise(joined, "", "\n")  # line + "\n" + ""
    if isinstance(lines, pa.ChunkedArray):
        lines = lines.combine_chunks()
    if len(lines) == 0:
        return b""
    width = np.int64 if pa.types.is_large_string(lines.type) else np.int32
    offsets = np.frombuffer(lines.buffers()[1], dtype=width)[lines.offset :]
    start, end = int(offsets[0]), int(offsets[len(lines)])
    return memoryview(lines.buffers()[2])[start:end]


def _rows(part: pd.DataFrame | pa.RecordBatch | pa.Table, columns: Sequence[str]) -> list[Column]:
    if isinstance(part, pd.DataFrame):
        return [part[c] for c in columns]
    return [part.column(c) for c in columns]


def write_csv(
    path: Path,
    columns: Sequence[str],
    frames: Iterable[pd.DataFrame | pa.RecordBatch | pa.Table],
) -> int:
    """Write frames or Arrow batches (already in their final order, holding at least
    ``columns``) as one CSV; returns the row count."""
    if len(columns) < 2:  # csv quotes a lone empty field; no table of the report has one column
        raise ValueError("a CSV file of the report has at least two columns")
    n = 0
    with path.open("wb") as fh:
        fh.write(_lines([_quoted(pa.array([name])) for name in columns]))
        for frame in frames:
            for start in range(0, len(frame), _CHUNK):  # the cells of one chunk at a time
                part = (
                    frame.iloc[start : start + _CHUNK]
                    if isinstance(frame, pd.DataFrame)
                    else frame.slice(start, _CHUNK)
                )
                fh.write(_lines([arrow_cells(c) for c in _rows(part, columns)]))
            n += len(frame)
    return n
