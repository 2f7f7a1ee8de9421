"""Audio and PDF parts of a request, estimated from their content (``calls.estimate``).

One token per 3 bytes is right for text and far off for media: a 1 MB PDF of 2 pages read as
~445,000 tokens, a 10-second WAV as ~142,000, and refused calls that fit. Where it is cheap and
exact enough, the content is read instead:

- a WAV's duration from its header (``fmt `` byte rate, ``data`` size) x ``AUDIO_TOKENS_PER_S``;
- a PDF's pages (its ``/Type /Page`` objects, also inside Flate-compressed object streams, as
  PDF 1.5+ writers store them) x ``PDF_PAGE_TOKENS``.

Anything else (an mp3, a PDF whose page objects are compressed, bad base64) is None: the caller
keeps the byte estimate. Every figure here is an estimate, marked as one where it is used.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import struct
import zlib

#: Audio input tokens per second: Gemini's published 32 per second, above OpenAI's 10 (one per
#: 100 ms of user audio): the estimate errs high, never low.
AUDIO_TOKENS_PER_S = 32
#: Tokens per PDF page: Anthropic reads a page as its text (1,500-3,000 tokens, their docs) and
#: its image (up to ~1,600); OpenAI likewise (text + page image), Gemini 258. The high end.
PDF_PAGE_TOKENS = 3_000 + 1_600
_PAGE = re.compile(rb"/Type\s*/Page(?![A-Za-z])")
_OBJECT_STREAM = re.compile(rb"/Type\s*/ObjStm(?![A-Za-z])")
#: Decompressed bytes read from a PDF's object streams at most (a zip bomb stops there).
MOST_INFLATED = 16 << 20
_WAV_HEAD = 4096  # bytes of a WAV read for its header (chunks before ``data`` are small)


def _raw(data: object, head: int | None = None) -> bytes | None:
    """The bytes of inline data: bytes as given, a base64 string or data URL decoded (its first
    ``head`` bytes only, when a header is all that is read)."""
    if isinstance(data, (bytes, bytearray)):
        return bytes(data if head is None else data[:head])
    if not isinstance(data, str):
        return None
    if data.startswith("data:"):
        data = data.partition(",")[2]
    if head is not None:
        data = data[: (head // 3 + 1) * 4]
    try:
        return base64.b64decode(data, validate=False)
    except (binascii.Error, ValueError):
        return None


def _size(data: object) -> int:
    """The decoded size of inline data (base64: 3 bytes per 4 characters)."""
    if isinstance(data, (bytes, bytearray)):
        return len(data)
    text = data.partition(",")[2] if isinstance(data, str) and data.startswith("data:") else str(data)
    return len(text) * 3 // 4


def wav_tokens(data: object) -> int | None:
    """Estimated tokens of a WAV file (bytes, base64 or a data URL); None when it is no WAV."""
    head = _raw(data, _WAV_HEAD)
    if head is None or len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    at, byte_rate = 12, 0
    while at + 8 <= len(head):
        name, size = head[at : at + 4], struct.unpack_from("<I", head, at + 4)[0]
        if name == b"fmt " and at + 16 <= len(head):
            byte_rate = struct.unpack_from("<I", head, at + 16)[0]
        elif name == b"data":
            if byte_rate <= 0:
                return None
            left = _size(data) - at - 8  # (a streamed WAV's ``data`` size may be a placeholder)
            seconds = min(size, left) / byte_rate if left > 0 else 0.0
            return max(1, math.ceil(seconds * AUDIO_TOKENS_PER_S))
        at += 8 + size + (size & 1)
    return None


def pdf_tokens(data: object) -> int | None:
    """Estimated tokens of a PDF (bytes, base64 or a data URL); None when no page is found."""
    raw = _raw(data)
    if raw is None or not raw.startswith(b"%PDF"):
        return None
    pages = len(_PAGE.findall(raw)) or _compressed_pages(raw)
    return pages * PDF_PAGE_TOKENS if pages else None


def _compressed_pages(raw: bytes) -> int:
    """The page objects inside a PDF's object streams (``/Type /ObjStm``, Flate-compressed)."""
    pages, left = 0, MOST_INFLATED
    for found in _OBJECT_STREAM.finditer(raw):
        start = raw.find(b"stream", found.end())
        if start < 0:
            break
        start += 6
        start += 2 if raw[start : start + 2] == b"\r\n" else 1
        end = raw.find(b"endstream", start)
        try:  # (a view up to its end: no copy of the rest of the file per stream)
            text = zlib.decompressobj().decompress(memoryview(raw)[start : end if end > 0 else None], left)
        except zlib.error:
            continue
        pages += len(_PAGE.findall(text))
        left -= len(text)
        if left <= 0:
            break
    return pages
