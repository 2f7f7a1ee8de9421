"""Reading the TOML files budgetspan is set up with (budgets, prices, plans), failing in one way.

Each caller names its file and the form it expects; the reason a file cannot be used is worded
here once, the same for all of them.
"""

from __future__ import annotations

import tomllib
from typing import Any


class TomlFileError(ValueError):
    """A TOML file that cannot be used; the message says why in a few words (no file name)."""


def read_toml(path: str) -> dict[str, Any]:
    """The document at ``path``; ``TomlFileError`` if it cannot be read or parsed."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise TomlFileError(f"cannot read the file ({e.strerror})") from e
    except tomllib.TOMLDecodeError as e:
        raise TomlFileError(f"not valid TOML ({e})") from e
    except (RecursionError, ValueError, OverflowError, MemoryError) as e:  # nesting, huge numbers
        raise TomlFileError(f"unreadable ({type(e).__name__})") from None
