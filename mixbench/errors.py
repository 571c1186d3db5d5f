"""Exceptions that the command line turns into a one-line message and exit status 2."""

from __future__ import annotations


class UsageError(Exception):
    """Bad input from the user: a wrong name, value, file or option.

    The message names the problem and the fix; the CLI prints it on one line without a
    traceback and exits with status 2.
    """


class UnknownNameError(UsageError, ValueError):
    """A registry lookup with a name that is not registered."""
