"""Bounded reading of the JSON and TOML files ltpipe parses: one size limit per kind of file, one
nesting-depth limit, and every failure a one-line ``ParseError`` (a ValueError) naming the file.

Every JSON or TOML input goes through here: manifest.json, the shard journal, the lock file,
the scan cache, a sample's ``.json`` member, iNat/COCO json, RUN/shards.json, metrics.jsonl,
recipes and RUN/config.toml. Without the limits a crafted or damaged file gives a
``RecursionError`` (nesting), an ``OverflowError`` (``1e400`` read as inf, then ``int(inf)``) or
a ``MemoryError`` (a huge file), each a traceback. So:

- a file over its size limit, or one that is not a regular file (a FIFO would block), is refused
  before it is read;
- nesting deeper than ``MAX_DEPTH`` containers is refused, whether the parser recurses (json,
  inline TOML arrays) or not (dotted TOML keys);
- JSON's non-standard ``NaN`` / ``Infinity`` and numbers out of float range (``1e400``) are
  refused: no ltpipe file holds one, and every reader would have to check for them.
"""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path

import tomllib

MAX_DEPTH = 32  # nested objects/arrays/tables; ltpipe's own files need 6
KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30


class ParseError(ValueError):
    """A file ltpipe reads is too large, too deep or malformed; the message is one line."""


class DepthError(ParseError):
    """Nested deeper than the limit (valid syntax, but no ltpipe file looks like that)."""


def read_bytes(path: str | Path, max_bytes: int, what: str = "file") -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` (ParseError otherwise; OSError when
    it cannot be opened). A FIFO or device is refused without a blocking open."""
    path = Path(path)
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise ParseError(f"{path}: not a regular file")
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with open(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # swapped since the stat above
            raise ParseError(f"{path}: not a regular file")
        if st.st_size > max_bytes:
            raise ParseError(f"{path}: {st.st_size:,} bytes, more than the {_size(max_bytes)} "
                             f"a {what} may have")
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:  # grew while being read
        raise ParseError(f"{path}: more than the {_size(max_bytes)} a {what} may have")
    return data


def parse_json(data: bytes | str, where: str, max_depth: int = MAX_DEPTH,
               allow_nan: bool = False):
    """A JSON document from ``data``; ``where`` names it in errors (a path, ``FILE:LINE``).
    ``allow_nan``: accept Python's ``NaN``/``Infinity`` tokens (files older ltpipe wrote)."""
    constant = float if allow_nan else _no_constant
    try:
        doc = json.loads(data, parse_float=_finite_float, parse_constant=constant)
    except RecursionError:
        raise DepthError(f"{where}: nested deeper than {max_depth} levels") from None
    except (ValueError, TypeError) as exc:  # JSONDecodeError, UnicodeDecodeError, int digits
        raise ParseError(f"{where}: not valid JSON ({_one_line(exc)})") from None
    check_depth(doc, where, max_depth)
    return doc


def read_json(path: str | Path, max_bytes: int, what: str = "JSON file",
              max_depth: int = MAX_DEPTH):
    """``parse_json`` of a file read with ``read_bytes``."""
    return parse_json(read_bytes(path, max_bytes, what), str(path), max_depth)


def parse_toml(text: str, where: str, max_depth: int = MAX_DEPTH) -> dict:
    """A TOML document from ``text``; ``where`` names it in errors."""
    try:
        doc = tomllib.loads(text)
    except RecursionError:
        raise DepthError(f"{where}: nested deeper than {max_depth} levels") from None
    except (tomllib.TOMLDecodeError, ValueError, TypeError) as exc:  # ValueError: int digits
        raise ParseError(f"{where}: not valid TOML ({_one_line(exc)})") from None
    check_depth(doc, where, max_depth)
    return doc


def read_toml(path: str | Path, max_bytes: int, what: str = "TOML file",
              max_depth: int = MAX_DEPTH) -> dict:
    """``parse_toml`` of a UTF-8 file read with ``read_bytes``."""
    data = read_bytes(path, max_bytes, what)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise ParseError(f"{path}:{line}: not UTF-8 text") from None
    return parse_toml(text, str(path), max_depth)


def check_depth(doc, where: str, max_depth: int = MAX_DEPTH) -> None:
    """ParseError when ``doc`` nests more than ``max_depth`` dicts/lists (iterative: a deep
    document must not exhaust the stack of whoever walks it next)."""
    todo = [(doc, 1)]
    while todo:
        node, depth = todo.pop()
        if depth > max_depth:
            raise DepthError(f"{where}: nested deeper than {max_depth} levels")
        children = node.values() if isinstance(node, dict) else node
        todo.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {_clip(text)} is out of range")
    return value


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _clip(text: str, n: int = 24) -> str:
    return text if len(text) <= n else text[:n - 3] + "..."


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200]


def _size(n: int) -> str:
    for unit, name in ((GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")):
        if n >= unit and n % unit == 0:
            return f"{n // unit} {name}"
    return f"{n:,} bytes"
