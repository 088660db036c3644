"""What a danescan command can end with: its exit codes, and the errors a user can fix."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Exit statuses, the same for every command (README: "Exit codes")."""

    OK = 0  # done; `check`: the domain is DANE-valid
    NOT_DANE = 1  # `check` only: judged, and not DANE-valid
    USAGE = 2  # nothing ran: bad option or URL, unreadable list, database or resolver refused
    INTERRUPTED = 3  # stopped early (signal, database or resolver outage): resumable
    INCOMPLETE = 4  # finished, but not every line was judged: the list ended early, or
    #                 `check` could not judge the domain
    INTERNAL_ERRORS = 5  # finished, but some lines hit a bug in danescan (internal_error)


class UsageError(Exception):
    """A problem the user can fix before anything runs; printed as one line, exit 2."""
