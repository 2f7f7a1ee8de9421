"""The report's compiled modules (extension modules only; see ``report.native``). Empty until built."""
