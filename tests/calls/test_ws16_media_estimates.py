"""ws16: audio and PDF parts of a request estimated from their content, not their bytes.

A 1 MB PDF of 2 pages was ~445,000 tokens (one per 3 base64 characters) and refused any call under
a real budget; a 10-second WAV ~142,000. Now a PDF is its page count (``/Type /Page`` objects) x a
per-page figure, a WAV its duration (from its header) x tokens per second; unreadable content falls
back to the byte estimate. The files are made here (a minimal PDF, a WAV by the ``wave`` module).
"""

from __future__ import annotations

import base64
import io
import wave
import zlib
from typing import Any

import openai
import pytest

import budgetspan
from budgetspan import attributes as A
from budgetspan.calls.estimate import AUDIO_TOKENS_PER_S, PDF_PAGE_TOKENS, request_tokens
from tests.replay import Recorder, json_response, openai_client


def pdf(pages: int, padding: int = 0) -> bytes:
    """A minimal PDF with ``pages`` pages (and ``padding`` bytes of a stream, as images make)."""
    kids = " ".join(f"{3 + n} 0 R" for n in range(pages))
    objects = [
        b"1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj",
        f"2 0 obj << /Type /Pages /Kids [{kids}] /Count {pages} >> endobj".encode(),
        *(
            f"{3 + n} 0 obj << /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] >> endobj".encode()
            for n in range(pages)
        ),
        b"99 0 obj << /Length %d >> stream\n" % padding
        + bytes(range(256)) * (padding // 256)
        + b"\nendstream endobj",
    ]
    return b"%PDF-1.4\n" + b"\n".join(objects) + b"\ntrailer << /Root 1 0 R >>\n%%EOF\n"


def compressed_pdf(pages: int) -> bytes:
    """A PDF 1.5 whose page objects are in a Flate-compressed object stream (as most writers do)."""
    body = b" ".join(b"<< /Type /Page /Parent 2 0 R >>" for _ in range(pages))
    packed = zlib.compress(b" ".join(b"%d 0" % (3 + n) for n in range(pages)) + b" " + body)
    head = b"5 0 obj << /Type /ObjStm /N %d /First 10 /Filter /FlateDecode /Length %d >>\nstream\n" % (
        pages,
        len(packed),
    )
    return (
        b"%PDF-1.5\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n"
        + head
        + packed
        + b"\nendstream\n%%EOF\n"
    )


def wav(seconds: float, rate: int = 16_000) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\x01\x00" * int(seconds * rate))
    return out.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_a_pdf_is_its_pages() -> None:
    """OpenAI chat ``file``, Responses ``input_file``, Anthropic ``document``, Gemini and Bedrock
    inline bytes: 2 pages of a 1 MB PDF are 2 x PDF_PAGE_TOKENS (was ~445,000)."""
    doc = pdf(2, padding=1_000_000)
    url = "data:application/pdf;base64," + b64(doc)
    shapes: list[Any] = [
        {"type": "file", "file": {"file_data": url, "filename": "a.pdf"}},
        {"type": "input_file", "file_data": url, "filename": "a.pdf"},
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": b64(doc)}},
        {"inline_data": {"mime_type": "application/pdf", "data": doc}},
        {"document": {"format": "pdf", "name": "a", "source": {"bytes": doc}}},
    ]
    for part in shapes:
        tokens = request_tokens([[{"role": "user", "content": [part]}]])
        assert 2 * PDF_PAGE_TOKENS <= tokens < 2 * PDF_PAGE_TOKENS + 100, part.get("type", part.keys())


def test_a_pdf_with_compressed_page_objects_is_its_pages() -> None:
    part = {"type": "input_file", "file_data": "data:application/pdf;base64," + b64(compressed_pdf(3))}
    assert request_tokens([part]) == pytest.approx(3 * PDF_PAGE_TOKENS, abs=50)


def test_a_wav_is_its_duration() -> None:
    data = wav(10.0)
    for part in (
        {"type": "input_audio", "input_audio": {"data": b64(data), "format": "wav"}},
        {"inline_data": {"mime_type": "audio/wav", "data": data}},
    ):
        tokens = request_tokens([[{"role": "user", "content": [part]}]])
        assert 10 * AUDIO_TOKENS_PER_S <= tokens < 10 * AUDIO_TOKENS_PER_S + 100  # was ~142,000


def test_unreadable_content_falls_back_to_its_bytes() -> None:
    """Not a PDF, not a WAV (an mp3, garbage): the byte estimate stands, never 0."""
    junk = b64(b"\xff\xfb" + bytes(30_000))
    for part in (
        {"type": "input_audio", "input_audio": {"data": junk, "format": "mp3"}},
        {"type": "input_file", "file_data": "data:application/pdf;base64," + junk, "filename": "x.pdf"},
    ):
        assert request_tokens([[{"role": "user", "content": [part]}]]) > len(junk) // 3


def test_a_two_page_pdf_fits_a_budget_it_was_refused_under(instrumented: Any) -> None:
    """The real openai SDK (recording local transport): ``max_input_tokens=20,000`` and a 1 MB,
    2-page PDF: sent (was: refused, its worst case ~445,000 input tokens)."""
    usage = {"prompt_tokens": 6000, "completion_tokens": 5, "total_tokens": 6005}
    body = {
        "id": "c",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "Two pages."}, "finish_reason": "stop"}
        ],
        "usage": usage,
    }
    rec = Recorder(json_response(body))
    url = "data:application/pdf;base64," + b64(pdf(2, padding=1_000_000))
    message = {"role": "user", "content": [{"type": "file", "file": {"file_data": url, "filename": "a.pdf"}}]}
    with budgetspan.run("pdf", max_input_tokens=20_000, max_cost_usd=1.0) as run:
        openai_client(rec).chat.completions.create(model="gpt-4o-mini", messages=[message], max_tokens=50)
    assert len(rec.requests) == 1 and run.usage.input_tokens == 6000
    assert instrumented.only("chat").attributes[A.WORST_CASE_COST] < 0.01


@pytest.mark.parametrize("seconds", [0.5, 60.0])
def test_wav_duration_scales(seconds: float) -> None:
    part = {"type": "input_audio", "input_audio": {"data": b64(wav(seconds, rate=8000)), "format": "wav"}}
    tokens = request_tokens([[{"role": "user", "content": [part]}]])
    assert tokens == pytest.approx(seconds * AUDIO_TOKENS_PER_S, abs=60)


_ = openai  # (the SDK under test, via openai_client)
