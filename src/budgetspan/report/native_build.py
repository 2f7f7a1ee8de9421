"""Build the report's compiled reading and analysis: ``python -m budgetspan.report.native_build``.

Copies of the hot modules (``native.HOT``) are written to a temporary package
``budgetspan.report._native`` (their imports of each other pointed at the copies), the copy of
``analysis`` carrying the bytes of the sources they were made from (``native.sources_on_disk``),
and compiled with mypyc (mypy and a C compiler needed) into one library (``core__mypyc``) and a
small module per copy that loads it. Only these extension modules land in
``budgetspan/report/_native/``: no ``.py`` of the package is ever shadowed, and ``native`` uses them
only while the stamp matches the current sources, so an edit makes the report fall back to the
pure modules until the next build.
"""

from __future__ import annotations

import ast
import os
import re
import site
import subprocess
import sys
import tempfile
from pathlib import Path

from budgetspan.report import native, native_install, rsnative, rsread_build

_PACKAGE = Path(__file__).resolve().parent.parent  # .../budgetspan


def _budgetspan_imports(path: Path) -> set[str]:
    """The budgetspan modules ``path`` imports (at any depth of the file: lazy imports count)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("budgetspan"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("budgetspan"))
    return found


def _file_of(module: str) -> Path | None:
    rel = Path(*module.split(".")[1:])
    for candidate in (_PACKAGE / rel.with_suffix(".py"), _PACKAGE / rel / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def sources() -> list[str]:
    """The files the compiled modules depend on, relative to the package: the hot modules and every
    budgetspan module they import, transitively (mypyc may fold their constants in)."""
    todo = [_PACKAGE / "report" / f"{m}.py" for m in native.HOT]
    seen: set[Path] = set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for module in _budgetspan_imports(path):
            parts = module.split(".")
            for i in range(2, len(parts) + 1):  # a package's __init__ runs too
                found = _file_of(".".join(parts[:i]))
                if found is not None:
                    todo.append(found)
    return sorted(p.relative_to(_PACKAGE).as_posix() for p in seen)


def _copy(name: str, text: str, stamp: bytes, files: list[str]) -> str:
    hot = "|".join(native.HOT)
    text = re.sub(rf"\bbudgetspan\.report\.({hot})\b", r"budgetspan.report._native.\1", text)
    text = re.sub(
        rf"^(\s*)from budgetspan\.report import ({hot})\b",
        r"\1from budgetspan.report._native import \2",
        text,
        flags=re.M,
    )
    if name != "analysis":  # one module carries the stamp: every module's code is in one library
        return text
    return text + f"\nNATIVE_SOURCE_BYTES = {stamp!r}\nNATIVE_SOURCES = {tuple(files)!r}\n"


def build(out_dir: Path | None = None, quiet: bool = False) -> Path:
    """Compile the copies; returns the directory holding the extension modules. The stamp file
    goes first and comes back last: a build that fails half-way leaves nothing in use."""
    out_dir = out_dir or _PACKAGE / "report" / native.NATIVE_DIR
    files = sources()
    stamp = native.sources_on_disk(str(_PACKAGE), files)
    texts = {name: (_PACKAGE / "report" / f"{name}.py").read_text(encoding="utf-8") for name in native.HOT}
    if stamp != native.sources_on_disk(str(_PACKAGE), files):
        raise RuntimeError("the sources changed while they were read; build again")
    with tempfile.TemporaryDirectory(prefix="budgetspan-native-") as tmp:
        pkg = Path(tmp) / "budgetspan" / "report" / native.NATIVE_DIR
        pkg.mkdir(parents=True)
        for init in (pkg.parent.parent, pkg.parent, pkg):
            (init / "__init__.py").write_text("")
        for name in native.HOT:
            (pkg / f"{name}.py").write_text(_copy(name, texts[name], stamp, files), encoding="utf-8")
        _compile(Path(tmp), quiet)
        install([p for p in pkg.iterdir() if p.suffix in (".so", ".pyd")], out_dir, files, stamp)
    return out_dir


def install(built: list[Path], out_dir: Path, files: list[str], stamp: bytes) -> None:
    """Put the built libraries in ``out_dir``, then the stamp (``native_install``); libraries of
    an earlier build that this one has not (the Rust reader's aside) and files a killed build left
    are removed."""
    names = {p.name for p in built}

    def tidy() -> None:
        for old in out_dir.iterdir():
            stale = (
                old.suffix in (".so", ".pyd")
                and old.name not in names
                and not old.name.startswith(rsnative.MODULE)
            )
            if stale or _left_by_a_dead_build(old):
                old.unlink(missing_ok=True)  # another build at the same time may have removed it

    stamp_text = " ".join(files).encode() + b"\n" + stamp
    native_install.install(built, out_dir, native.STAMP_FILE, stamp_text, tidy)


def _left_by_a_dead_build(path: Path) -> bool:
    """A ``NAME.PID.part`` whose build was killed while copying (never loaded, but it took space).
    A live build's own part files are left alone: it renames them into place itself."""
    name, _, pid = path.name.removesuffix(".part").rpartition(".")
    if not path.name.endswith(".part") or not name or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError):
        return False  # another user's live process; a number no process can have is not ours
    return False


def _compile(tmp: Path, quiet: bool) -> None:
    modules = [f"budgetspan/report/{native.NATIVE_DIR}/{m}.py" for m in native.HOT]
    (tmp / "setup.py").write_text(
        "from setuptools import setup\nfrom mypyc.build import mypycify\n"
        f"setup(name='budgetspan-native', ext_modules=mypycify({modules!r}, "
        f"group_name='budgetspan.report.{native.NATIVE_DIR}.core', opt_level='3'))\n"
    )
    run = subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--inplace"],
        cwd=tmp,
        env=_mypy_env(),
        capture_output=quiet,
        text=True,
        check=False,
    )
    if run.returncode != 0:
        raise RuntimeError(f"mypyc build failed:\n{(run.stderr or '')[-3000:]}")


def _mypy_env() -> dict[str, str]:
    """mypy must type the copies against these sources: from a source tree through MYPYPATH;
    installed (a wheel), it finds them itself, and refuses a site-packages directory in MYPYPATH."""
    env = {k: v for k, v in os.environ.items() if k != "MYPYPATH"}
    installed = [*site.getsitepackages(), *([site.getusersitepackages()] if site.ENABLE_USER_SITE else [])]
    if str(_PACKAGE.parent) not in {str(Path(p).resolve()) for p in installed}:
        env["MYPYPATH"] = str(_PACKAGE.parent)
    return env


def main(argv: list[str]) -> int:
    """The mypyc build, then the Rust reader's (``rsread_build``): each may fail on its own (no C
    compiler, no rustc), saying so; the report then runs what was built, pure Python otherwise.
    The exit status is the mypyc build's (the Rust reader is optional: no rustc is no error)."""
    quiet = "--quiet" in argv
    status = _mypyc_main(quiet)
    rsread_build.main(argv)
    return status


def _mypyc_main(quiet: bool) -> int:
    try:
        where = build(quiet=quiet)
    except (RuntimeError, OSError) as e:
        print(
            f"budgetspan: the report's modules were not compiled ({e}); it runs pure Python.", file=sys.stderr
        )
        print(
            "  needs: pip install 'budgetspan[report-native]', a C compiler and the Python headers",
            file=sys.stderr,
        )
        return 1
    if not quiet:
        print(f"compiled report modules in {where}; in use while the sources are unchanged")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
