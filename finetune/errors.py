"""The error a user can fix: bad data or bad params, reported as one line without a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's data or params: reported as one line, no traceback."""
