"""Span processors: budget enforcement/accounting and Prometheus metrics."""
