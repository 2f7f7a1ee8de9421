"""Reading the TOML files budgetspan is set up with (budgets, prices, plans), failing in one way.

Each caller names its file and the form it expects; the reason a file cannot be used is worded
here once, the same for all of them.
"""

from __future__ import annotations

import os
import stat
import tomllib
from typing import Any


class TomlFileError(ValueError):
    """A TOML file that cannot be used; the message says why in a few words (no file name)."""


#: A budgets, prices or plan file is a few kilobytes; past this it is a mistake, not a file to read.
MAX_BYTES = 16 * 1024 * 1024


def read_toml(path: str) -> dict[str, Any]:
    """The document at ``path``; ``TomlFileError`` if it cannot be read or parsed.

    Only a regular file of at most ``MAX_BYTES`` is read: opening a FIFO blocked the program's
    start for ever, and ``/dev/zero`` was read until the kernel killed the process."""
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise TomlFileError("not a regular file")
        if info.st_size > MAX_BYTES:
            raise TomlFileError(f"larger than {MAX_BYTES // (1024 * 1024)} MiB")
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
        if len(data) > MAX_BYTES:  # (grew since, or a special file that says size 0)
            raise TomlFileError(f"larger than {MAX_BYTES // (1024 * 1024)} MiB")
        return tomllib.loads(data.decode("utf-8"))
    except TomlFileError:
        raise
    except UnicodeDecodeError as e:
        raise TomlFileError(f"not valid TOML (not UTF-8 at byte {e.start})") from None
    except OSError as e:
        raise TomlFileError(f"cannot read the file ({e.strerror})") from e
    except tomllib.TOMLDecodeError as e:
        raise TomlFileError(f"not valid TOML ({e})") from e
    except (RecursionError, ValueError, OverflowError, MemoryError) as e:  # nesting, huge numbers
        raise TomlFileError(f"unreadable ({type(e).__name__})") from None
