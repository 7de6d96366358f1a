"""Reading JSON and YAML that may be hostile or damaged: bounded in size, depth and numbers, never hanging.

Every file a user did not write by hand in this session goes through here: checkpoint metadata, a
foreign checkpoint's ``data``, committed compare records, ``tune.json`` files, run-directory JSON and
suite YAML files. A crafted file must not hang the reader (a FIFO, ``/dev/zero``), exhaust memory (a
YAML alias bomb, a giant file), or crash it with a traceback (20,000 nested brackets, a 5,000-digit
integer, invalid UTF-8). Each refusal is an ``UntrustedFileError`` (a ``ValueError``) whose message names
the file and the problem, so each caller turns it into its own one-line error.

It lives in ``envs/`` because suite files are read here and this layer imports no other project code;
the layers above import it.
"""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path
from typing import Any

import yaml

MAX_BYTES = 16 * 2**20
"""Largest file read (our own files are a few KiB; checkpoint metadata is capped at the same size)."""
MAX_DEPTH = 64
"""Deepest nesting of lists/objects (ours is under 10)."""
MAX_NODES = 1_000_000
"""Most values in one document."""
MAX_INT_DIGITS = 19
"""Integers are at most 19 digits (int64); larger ones are refused before Python parses them."""


class UntrustedFileError(ValueError):
    """A file, or the text of one, refused: not a regular file, too large, too deep, not JSON/YAML, ..."""


class MissingFileError(UntrustedFileError):
    """The file does not exist (callers that treat an absent file as "nothing stored" catch this)."""


def read_regular_file(path: str | Path, limit: int = MAX_BYTES, what: str = "file") -> bytes:
    """The bytes of ``path``, which must be a regular file of at most ``limit`` bytes.

    Opened without blocking and checked with ``fstat`` on the open descriptor, so a FIFO, a device (a
    symlink to ``/dev/zero``) or a directory is refused at once instead of hanging or filling memory.
    """
    name = f"{what} {str(path)!r}"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except (FileNotFoundError, NotADirectoryError) as err:  # a file where a folder should be: absent too
        raise MissingFileError(f"{name} does not exist") from err
    except OSError as err:
        raise UntrustedFileError(f"cannot read {name}: {err.strerror or err}") from err
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = "a directory" if stat.S_ISDIR(info.st_mode) else "a FIFO, a device or a socket"
            raise UntrustedFileError(f"{name} is {kind}, not a regular file; refused")
        if info.st_size > limit:
            raise UntrustedFileError(f"{name} is larger than {_size(limit)}; refused")
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, min(2**20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:  # grew while we read it
            raise UntrustedFileError(f"{name} is larger than {_size(limit)}; refused")
        return b"".join(chunks)
    except OSError as err:
        raise UntrustedFileError(f"cannot read {name}: {err.strerror or err}") from err
    finally:
        os.close(fd)


def parse_json(raw: bytes | str, what: str = "JSON") -> Any:
    """``raw`` as JSON: UTF-8, at most ``MAX_BYTES``, ``MAX_DEPTH`` deep, integers of at most
    ``MAX_INT_DIGITS`` digits, finite floats (NaN, which our own results may hold, is kept)."""
    text = _text(raw, what)
    try:
        data = json.loads(
            text, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant
        )
    except RecursionError as err:
        raise UntrustedFileError(f"{what} is nested more than {MAX_DEPTH} levels deep; refused") from err
    except UntrustedFileError as err:
        raise UntrustedFileError(f"{what}: {err}") from err
    except json.JSONDecodeError as err:
        raise UntrustedFileError(f"{what} is not valid JSON: {err}") from err
    check_tree(data, what)
    return data


def parse_yaml(raw: bytes | str, what: str = "YAML") -> Any:
    """``raw`` as YAML with the safe loader, refusing aliases (``*name``: the "billion laughs" bomb) and
    nesting deeper than ``MAX_DEPTH``; numbers bounded as in ``parse_json``."""
    text = _text(raw, what)
    try:
        data = yaml.load(text, Loader=_BoundedLoader)  # a SafeLoader subclass
    except RecursionError as err:
        raise UntrustedFileError(f"{what} is nested more than {MAX_DEPTH} levels deep; refused") from err
    except (yaml.YAMLError, ValueError) as err:  # ValueError: an integer over Python's digit limit
        raise UntrustedFileError(f"{what} cannot be read as YAML: {_one_line(err)}") from err
    check_tree(data, what)
    return data


def load_json(path: str | Path, what: str = "file", limit: int = MAX_BYTES) -> Any:
    """``read_regular_file`` then ``parse_json``; every error names ``what`` and the path."""
    return parse_json(read_regular_file(path, limit, what), f"{what} {str(path)!r}")


def load_yaml(path: str | Path, what: str = "file", limit: int = MAX_BYTES) -> Any:
    """``read_regular_file`` then ``parse_yaml``."""
    return parse_yaml(read_regular_file(path, limit, what), f"{what} {str(path)!r}")


def check_tree(data: Any, what: str = "data") -> None:
    """Refuse a parsed document (or a literal) deeper than ``MAX_DEPTH``, with more than ``MAX_NODES``
    values, an integer beyond int64 or an infinite float; iterative, so depth itself cannot crash it."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    nodes = 0
    while stack:
        value, depth = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            raise UntrustedFileError(f"{what} holds more than {MAX_NODES} values; refused")
        if isinstance(value, dict):
            if depth > MAX_DEPTH:
                raise UntrustedFileError(f"{what} is nested more than {MAX_DEPTH} levels deep; refused")
            stack.extend((v, depth + 1) for item in value.items() for v in item)
        elif isinstance(value, list | tuple | set | frozenset):
            if depth > MAX_DEPTH:
                raise UntrustedFileError(f"{what} is nested more than {MAX_DEPTH} levels deep; refused")
            stack.extend((v, depth + 1) for v in value)
        elif isinstance(value, bool):
            continue
        elif isinstance(value, int):
            if abs(value) >= 2**63:
                raise UntrustedFileError(f"{what} holds an integer beyond 64 bits; refused")
        elif isinstance(value, float) and math.isinf(value):
            raise UntrustedFileError(f"{what} holds an infinite number; refused")


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader without aliases and with a depth limit while composing."""

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not allowed in this file", event.start_mark
            )
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"nested more than {MAX_DEPTH} levels deep", self.peek_event().start_mark
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _text(raw: bytes | str, what: str) -> str:
    if len(raw) > MAX_BYTES:
        raise UntrustedFileError(f"{what} is larger than {_size(MAX_BYTES)}; refused")
    if isinstance(raw, str):
        return raw
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UntrustedFileError(f"{what} is not UTF-8 text: {err}") from err


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise UntrustedFileError(f"an integer of {len(text)} digits (at most {MAX_INT_DIGITS}); refused")
    return int(text)


def _parse_float(text: str) -> float:
    if len(text) > 100:
        raise UntrustedFileError(f"a number written with {len(text)} characters; refused")
    value = float(text)
    if math.isinf(value):
        raise UntrustedFileError(f"the number {text} is beyond a float's range; refused")
    return value


def _parse_constant(name: str) -> float:
    if name == "NaN":
        return math.nan
    raise UntrustedFileError(f"{name} is not a number this project stores; refused")


def _size(limit: int) -> str:
    return f"{limit // 2**20} MiB" if limit >= 2**20 else f"{limit} bytes"


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())
