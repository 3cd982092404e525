"""The one kind of error a user can fix: the CLI prints its message and exits 2, no traceback."""

from __future__ import annotations


class UserError(Exception):
    """Input a user can fix (a spec, a path, a table, a port): one message naming what is wrong."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message
