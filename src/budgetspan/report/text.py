"""Text from spans, made safe to print: control characters are shown, not obeyed.

Span names, workflow names, phases, reasons and explanations come from whoever wrote the trace
file. Printed raw, an escape sequence in a workflow name can clear the screen, retitle the
terminal, rewrite earlier lines or hide text; a newline breaks a Markdown table; bidirectional
overrides reorder what a reader sees; a lone surrogate cannot be encoded and would crash the
output. Each such character is shown as a Python-style escape (``\\x1b``, ``\\u202e``) instead.
JSON output needs none of this: ``json.dumps`` escapes them already.
"""

from __future__ import annotations

import re

_UNSAFE_RANGES = (
    (0x00, 0x1F),  # C0 controls, tab and newline included
    (0x7F, 0x9F),  # DEL and C1 controls (0x9b is a one-byte CSI on some terminals)
    (0x200E, 0x200F),  # left-to-right / right-to-left marks
    (0x2028, 0x2029),  # line and paragraph separators
    (0x202A, 0x202E),  # bidirectional embeddings and overrides
    (0x2066, 0x2069),  # bidirectional isolates
    (0xD800, 0xDFFF),  # lone surrogates (not encodable)
)
_UNSAFE = re.compile("[" + "".join(f"\\u{lo:04x}-\\u{hi:04x}" for lo, hi in _UNSAFE_RANGES) + "]")


def _escape(m: re.Match[str]) -> str:
    code = ord(m.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe(text: str) -> str:
    """``text`` with every control character (see the module's docstring) escaped."""
    return _UNSAFE.sub(_escape, text) if _UNSAFE.search(text) else text


__all__ = ["safe"]
