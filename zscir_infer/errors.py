"""The user-error hierarchy of zscir: every error a user can act on is a `ZscirError`.

A `ZscirError` means the input was wrong (a file, a value, an option): its message names the file or
value and what to do, and the command-line tools print it as one line (`Error: ...`, exit code 1).
Anything else that escapes, e.g. a bare ValueError from a bug, is a programming error and keeps its
traceback. The concrete errors stay subclasses of ValueError (or RuntimeError) as well, so callers that
caught those keep working.
"""

from __future__ import annotations


class ZscirError(Exception):
    """Bad input or a state the user can fix; the message says what and how."""


class UsageError(ZscirError, ValueError):
    """Options or arguments that do not go together (exit code 2 on the command line)."""


class OutputExistsError(ZscirError, FileExistsError):
    """An output (bundle, gallery, repository) already exists and was not to be replaced."""


class InputError(ZscirError, ValueError):
    """A value passed to the library is out of its domain (an unknown method, an alpha outside [0, 1])."""
