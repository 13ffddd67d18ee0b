"""How ltpipe writes its text outputs (config.toml, metrics.jsonl, final.json, shards.json, the
benchmarks' JSON): strict JSON, and whole files that never appear half-written.

Strict JSON: Python's ``json`` writes a float nan or inf as the bare tokens ``NaN`` and
``Infinity``, which strict readers (``jq``, JavaScript, Go, most databases) refuse. ``json_text``
writes such a value as ``null`` instead, the "no number" every reader knows.

Whole files: ``write_text_atomic`` writes a temporary ``.NAME.tmpPID`` beside the file and renames
it into place; when the write fails (a full disk, a name the file system refuses) the temporary is
removed before the error goes on, so no stray file is left behind.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path


def finite_or_null(value):
    """``value`` with every float nan or inf, in nested dicts, lists and tuples, as None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(v) for v in value]
    return value


def json_text(value, **dumps_kwargs) -> str:
    """``json.dumps`` that only writes strict JSON (nan and inf become null)."""
    return json.dumps(finite_or_null(value), allow_nan=False, **dumps_kwargs)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` by a temporary name and a rename; on failure the
    temporary is removed and the error is raised."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:  # also Ctrl-C halfway: never leave the temporary behind
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
