"""configure() patches libraries the program imports, without importing the ones it does not use."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_configure_imports_no_instrumented_library_and_patches_on_import() -> None:
    script = textwrap.dedent(
        """
        import sys
        import budgetspan
        from opentelemetry.sdk.trace import TracerProvider
        budgetspan.configure(TracerProvider())
        budgetspan.configure()  # twice: no second hook, no error
        heavy = [m for m in ("chromadb", "llama_index.core", "qdrant_client", "openai", "anthropic") if m in sys.modules]
        print("imported-by-configure:", heavy)
        import openai
        import anthropic
        from budgetspan.instrumentation.openai import OpenAIInstrumentor
        from budgetspan.instrumentation.anthropic import AnthropicInstrumentor
        print("patched:", OpenAIInstrumentor().is_instrumented_by_opentelemetry,
              AnthropicInstrumentor().is_instrumented_by_opentelemetry)
        print("wrapped:", hasattr(openai.resources.chat.completions.Completions.create, "__wrapped__"))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "imported-by-configure: []" in out.stdout
    assert "patched: True True" in out.stdout
    assert "wrapped: True" in out.stdout


def test_configure_with_a_list_patches_only_those(tracing: object) -> None:
    script = textwrap.dedent(
        """
        import openai, anthropic
        import budgetspan
        from opentelemetry.sdk.trace import TracerProvider
        budgetspan.configure(TracerProvider(), instrument=["anthropic"])
        from budgetspan.instrumentation.openai import OpenAIInstrumentor
        from budgetspan.instrumentation.anthropic import AnthropicInstrumentor
        print(OpenAIInstrumentor().is_instrumented_by_opentelemetry, AnthropicInstrumentor().is_instrumented_by_opentelemetry)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("False True")
