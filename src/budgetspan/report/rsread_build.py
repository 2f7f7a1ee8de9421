"""Build the report's Rust reader: ``python -m budgetspan.report.rsread_build`` (``native_build`` runs it too).

``rustc`` compiles ``rsread/lib.rs`` (no crates, no cargo: nothing to fetch; ~10 s) into a temporary
directory; the library is then put in ``_native/`` and the stamp written last (``native_install``),
so a report never loads a half-written library, and a failed build leaves the Python reading in use.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

from budgetspan.report import native_install, rsnative

_HERE = Path(__file__).resolve().parent
RUSTC_FLAGS = (
    "--edition=2021",
    "--crate-type=cdylib",
    f"--crate-name={rsnative.MODULE}",
    "-Copt-level=3",
    "-Cpanic=abort",
    "-Ccodegen-units=1",
    "-Cstrip=debuginfo",
)


def find_rustc() -> str | None:
    """On the PATH, else where rustup puts it (a CI shell may not have sourced ~/.cargo/env)."""
    found = shutil.which("rustc")
    if found is None:
        rustup = Path.home() / ".cargo" / "bin" / "rustc"
        found = str(rustup) if rustup.is_file() else None
    return found


def library_name() -> str:
    return rsnative.MODULE + (sysconfig.get_config_var("EXT_SUFFIX") or ".so")


def build(out_dir: Path | None = None) -> Path:
    """Compile and install; returns the library's path. Raises RuntimeError/OSError on failure."""
    out_dir = out_dir or _HERE / rsnative.NATIVE_DIR
    rustc = find_rustc()
    if rustc is None:
        raise RuntimeError("no rustc on the PATH nor in ~/.cargo/bin")
    stamp = rsnative.sources_on_disk(str(_HERE))
    with tempfile.TemporaryDirectory(prefix="budgetspan-rsread-") as tmp:
        built = Path(tmp) / library_name()
        cmd = [rustc, *RUSTC_FLAGS, "-o", str(built), str(_HERE / rsnative.CRATE_DIR / "lib.rs")]
        run = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if run.returncode != 0:
            raise RuntimeError(f"rustc failed:\n{run.stderr[-3000:]}")
        if stamp != rsnative.sources_on_disk(str(_HERE)):
            raise RuntimeError("the Rust sources changed while they were compiled; build again")
        native_install.install([built], out_dir, rsnative.STAMP_FILE, stamp)
    return out_dir / library_name()


def main(argv: list[str]) -> int:
    try:
        where = build()
    except (RuntimeError, OSError) as e:
        print(
            f"budgetspan: the report's Rust reader was not built ({e}); lines are read in Python.",
            file=sys.stderr,
        )
        return 1
    if "--quiet" not in argv:
        print(f"built the report's Rust reader: {where}; in use while its sources are unchanged")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
