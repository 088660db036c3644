"""The one rule for text cells of every CSV danescan writes (``export``, ``report``).

Text from the network or from an input list may start like a spreadsheet formula; opened in a
spreadsheet such a cell would run (CSV injection). It gets a leading apostrophe, which
spreadsheets show as text and which keeps the value readable.
"""

from __future__ import annotations

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def neutralise(text: str) -> str:
    """``text``, or ``'`` + ``text`` when a spreadsheet would take it for a formula."""
    return "'" + text if text.startswith(FORMULA_PREFIXES) else text
