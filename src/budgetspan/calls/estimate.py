"""Token estimates where the provider says nothing yet (a request) or ever (a stream without usage).

Estimate: one token per 3 bytes of UTF-8 text, plus 4 tokens per message. Byte-level BPE
tokenizers (OpenAI's o200k/cl100k, Anthropic's, Llama's) average 3.5-4.5 bytes per token on
English prose and code, about 3 on CJK text, so the estimate is typically 0-35% above the true
count and rarely below it; it is an estimate, marked as one wherever it is used.

An image part (OpenAI's ``image_url`` / ``input_image``, Anthropic's ``image``, Gemini's inline
or file data of an ``image/*`` type, Bedrock Converse's ``image`` block) counts as ``IMAGE_TOKENS`` whatever its JSON text: a URL's few bytes or a base64 payload's hundreds of
thousands say nothing of what a model reads (OpenAI's gpt-4o reads up to ~1,450 tokens of a high
detail image, Anthropic up to ~1,600 of a 1.15-megapixel one, Gemini 258 per tile).

An audio or PDF part (OpenAI's ``input_audio``, ``file`` and ``input_file``, Anthropic's base64
``document``, Gemini's inline data, Bedrock Converse's ``document``) counts by its content where
that is cheap to read: a WAV by its duration, a PDF by its pages (``calls.media``); else by its
bytes as before (errs high).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from budgetspan.calls.media import AUDIO_TOKENS_PER_S, PDF_PAGE_TOKENS, pdf_tokens, wav_tokens

__all__ = ["AUDIO_TOKENS_PER_S", "IMAGE_TOKENS", "PDF_PAGE_TOKENS", "request_tokens", "text_tokens"]

BYTES_PER_TOKEN = 3
TOKENS_PER_MESSAGE = 4
IMAGE_TOKENS = 1_600
_IMAGE_TYPES = frozenset({"image_url", "input_image", "image"})


def text_tokens(text: str) -> int:
    """Estimated tokens of one piece of text."""
    size = len(text) if text.isascii() else len(text.encode("utf-8", "replace"))
    return -(-size // BYTES_PER_TOKEN)  # rounded up


def request_tokens(parts: Iterable[Any]) -> int:
    """Estimated input tokens of a request: its messages, system prompt, tools... (``parts``) as
    JSON text, plus the per-message overhead of each list of messages. JSON's own quotes and keys
    make this a slight overestimate, on the safe side for a reservation."""
    total = 0
    for part in parts:
        if part is None:
            continue
        text = part if isinstance(part, str) else _ENCODER.encode(part)
        if not isinstance(part, str) and ('"image' in text or "pdf" in text or "audio" in text):
            media = [0]  # (cheap: most requests have none)
            text = _ENCODER.encode(_without_media(part, media))
            total += media[0]
        total += text_tokens(text)
        if isinstance(part, (list, tuple)):
            total += TOKENS_PER_MESSAGE * len(part)
    return total


def _without_media(value: Any, media: list[int]) -> Any:
    """``value`` with its image, audio and PDF parts taken out (their tokens added to
    ``media[0]``); SDK objects are read as their data, as the encoder reads them (google-genai's
    parts are pydantic models). A part whose content cannot be read stays: counted by its bytes."""
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        value = dump()
    if isinstance(value, dict):
        if value.get("type") in _IMAGE_TYPES or _is_image_data(value):
            media[0] += IMAGE_TOKENS
            return None
        tokens = _media_tokens(value)
        if tokens is not None:
            media[0] += tokens
            return None
        return {key: _without_media(item, media) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_without_media(item, media) for item in value]
    return value


def _media_tokens(value: dict[Any, Any]) -> int | None:
    """The tokens of an audio or PDF part read from its content; None for any other dict, or
    content that cannot be read."""
    kind = value.get("type")
    if kind == "input_audio":
        return wav_tokens(_get(value.get("input_audio"), "data"))
    if kind == "file":
        return pdf_tokens(_get(value.get("file"), "file_data"))
    if kind == "input_file":
        return pdf_tokens(value.get("file_data"))
    if kind == "document":
        source = value.get("source")
        return pdf_tokens(_get(source, "data")) if _get(source, "type") == "base64" else None
    document = value.get("document")  # Bedrock Converse
    if isinstance(document, dict) and document.get("format") == "pdf":
        return pdf_tokens(_get(document.get("source"), "bytes"))
    mime = value.get("mime_type") or value.get("mimeType")  # Gemini inline data
    if isinstance(mime, str) and "data" in value:
        if mime.startswith("audio/"):
            return wav_tokens(value["data"])
        if mime == "application/pdf":
            return pdf_tokens(value["data"])
    return None


def _get(value: Any, key: str) -> Any:
    return value.get(key) if isinstance(value, dict) else None


def _is_image_data(value: dict[Any, Any]) -> bool:
    """Gemini's ``inline_data`` (raw bytes) or ``file_data`` (a URI) of an image, or a Bedrock
    Converse image block (``{"image": {"format", "source"}}``, no ``type``)."""
    image = value.get("image")
    if isinstance(image, dict) and "source" in image:
        return True
    mime = value.get("mime_type") or value.get("mimeType")
    has_data = any(key in value for key in ("data", "file_uri", "fileUri"))
    return isinstance(mime, str) and mime.startswith("image/") and has_data


def _plain(value: Any) -> Any:
    """SDK objects passed back as messages (pydantic models), as their data."""
    dump = getattr(value, "model_dump", None)
    return dump() if callable(dump) else str(value)


_ENCODER = json.JSONEncoder(
    ensure_ascii=False, default=_plain
)  # made once: json.dumps with options makes one per call
