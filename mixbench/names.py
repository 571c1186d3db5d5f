"""Names that become file names and Markdown text: what a valid one is, and safe forms of any.

Preset, method, data set and model names end up in plot file names and in the leaderboard's
headings and tables. :func:`name_problem` says what is wrong with a name that could leave a
folder, break a heading or a table, or that a database backend cannot store; the leaderboard
also builds its file names through :func:`file_part` and its text through :func:`one_line`,
so that a name stored before these checks existed still cannot escape.
"""

from __future__ import annotations

import re

#: A name: letters, digits and ``_ . + -`` (spaces inside), starting with a letter or digit.
NAME_PATTERN = re.compile(r"[^\W_][\w.+\- ]*", re.UNICODE)
#: The longest name the results database stores (its name columns are ``VARCHAR(200)``).
MAX_NAME = 200

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def name_problem(value: object, what: str) -> str | None:
    """What makes ``value`` unusable as the name ``what`` (``None`` when it is fine)."""
    if not isinstance(value, str):
        return f"{what} must be a name (a string), got {short_repr(value)}"
    if len(value) > MAX_NAME:
        return f"{what} is longer than {MAX_NAME} characters"
    if not NAME_PATTERN.fullmatch(value) or value != value.strip():
        return (
            f"{what} {short_repr(value)} is not a valid name: use letters, digits, '_', '.', '+' "
            "and '-' (no '/', quotes, control characters or leading dots)"
        )
    return None


def file_part(text: str) -> str:
    """``text`` as one safe file-name component: characters other than letters, digits and
    ``_ . + -`` become ``_``, and it never starts with a dot (so never ``.`` or ``..``)."""
    return re.sub(r"[^A-Za-z0-9_.+\-]+", "_", str(text)).lstrip(".") or "_"


def one_line(text: str) -> str:
    """``text`` with control characters (newlines included) replaced by spaces: it cannot start
    a new line of a Markdown file (a heading, a list item) wherever it is written."""
    return _CONTROL.sub(" ", str(text))


def short_repr(value: object) -> str:
    """``repr(value)``, cut to 60 characters."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
