"""The one error type for the user's mistakes: a bad name, a bad value, a bad file.

``train.py`` prints a ``UserError`` as one ``error: ...`` line and exits with status 2; every other
exception is a bug or an environment failure and keeps its traceback. Library and agent code raise
``ValueError`` as torch does; the application turns those into ``UserError`` only where it reads what
the user gave (``user_input``), never around training, so a ``ValueError`` from inside the core during
``learn`` still shows its traceback.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator

#: Errors of the disk rather than of the code: full, over quota, read-only. Never a traceback.
STORAGE_ERRNOS: frozenset[int] = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


class UserError(Exception):
    """Something the user can fix; the message says what was wrong and how to fix it."""


@contextlib.contextmanager
def output_path(path: object) -> Iterator[None]:
    """Writing where the user said: an unusable path (missing parent, a file in the way, read-only, full)
    is one line naming it, not a traceback."""
    try:
        yield
    except OSError as err:
        raise UserError(f"cannot write to {str(path)!r}: {err.strerror or err}") from err


@contextlib.contextmanager
def user_input(
    what: str = "", errors: tuple[type[Exception], ...] = (ValueError, TypeError)
) -> Iterator[None]:
    """Turn ``errors`` raised while checking the user's input into ``UserError``.

    ``what`` prefixes the message (e.g. ``"invalid agent settings"``). Around code that also runs more
    than checks (building a model), pass ``errors=(ValueError,)``: constructors report bad values with
    ``ValueError``, while a ``TypeError`` there is more likely a bug and keeps its traceback.
    """
    try:
        yield
    except UserError:
        raise
    except errors as err:
        raise UserError(f"{what}: {err}" if what else str(err)) from err


def storage_error(err: OSError) -> UserError | None:
    """The one line for a disk that is full, over quota or read-only (``None`` for any other
    ``OSError``, which is a bug or a system failure and keeps its traceback). Every output is written
    atomically (``app/atomic.py``), so the files written before are whole, and re-running the same
    command continues from them."""
    if err.errno not in STORAGE_ERRNOS:
        return None
    return UserError(
        f"cannot write to {err.filename or 'the output folder'}: {err.strerror or err}; files written "
        "before are intact: free space (or make the folder writable) and run the same command again"
    )
