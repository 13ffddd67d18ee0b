"""Names from the data (class names, file names, paths) made safe to print and to store as one
record: control characters (ANSI escapes, line and paragraph separators, NEL, VT, FF), bidi
overrides and bytes that are not UTF-8 become visible escapes, so a name can neither drive the
terminal nor split a record into two.
"""

from __future__ import annotations

import re

# C0 and C1 controls, DEL, U+2028/U+2029, bidi marks/overrides/isolates, lone surrogates
UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069"
                         "\ud800-\udfff]")


def _escape(match: re.Match) -> str:
    code = ord(match.group())
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (a file name's surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text) -> str:
    """``text`` with every unprintable character as ``\\xNN`` or ``\\uNNNN``."""
    return UNPRINTABLE.sub(_escape, str(text))
