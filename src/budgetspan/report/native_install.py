"""Put a native build in place: its libraries, then the stamp that says what they were built from
(``native_build`` for the mypyc modules, ``rsread_build`` for the Rust reader).

Each file is written under a name of its own (``NAME.PID.part``) and renamed into place, the stamp
removed first and written last: a report that checked the stamp just before (or a second build's
stamp) never loads a library half written (a truncated library loads, then dies of SIGBUS).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path


def install(
    built: list[Path], out_dir: Path, stamp_file: str, stamp: bytes, tidy: Callable[[], None] | None = None
) -> None:
    """``built`` into ``out_dir``, then ``stamp`` as ``stamp_file``; ``tidy`` runs once the old
    stamp is gone, before the copies (old libraries removed)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / stamp_file).unlink(missing_ok=True)
    if tidy is not None:
        tidy()
    part = f".{os.getpid()}.part"
    for p in built:
        shutil.copy2(p, out_dir / (p.name + part))
        os.replace(out_dir / (p.name + part), out_dir / p.name)
    (out_dir / (stamp_file + part)).write_bytes(stamp)
    os.replace(out_dir / (stamp_file + part), out_dir / stamp_file)
