"""The wheel as a pip user gets it: built from this tree, installed without extras into a fresh
venv (dependencies through pip's ordinary index and cache). ``budgetspan demo`` stops at once with
exit status 2 and the exact install command; ``budgetspan report`` on a file without spans exits
non-zero; ``budgetspan assets`` writes the repository's dashboards and configuration byte for byte."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from budgetspan.demo.runner import DEMO_INSTALL
from tests.packaging.test_assets import REPO, repo_assets

SKIP_DIRS = {
    ".git",
    "build",
    "dist",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    "__pycache__",
    "node_modules",
}


# The venv sees only what it installed: no PYTHONPATH (a source tree on it would pass for the
# installed package, and its egg-info for an installed distribution).
CLEAN_ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}


def _ignore(folder: str, names: list[str]) -> set[str]:
    return {n for n in names if n in SKIP_DIRS or n.endswith(".egg-info") or n.startswith(".venv")}


@pytest.fixture(scope="module")
def plain_install(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("clean-venv")
    tree = tmp / "tree"  # a copy, so the build leaves nothing in the working tree (symlinks kept)
    shutil.copytree(REPO, tree, symlinks=True, ignore=_ignore)
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            str(tree),
            "-w",
            str(tmp / "dist"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = (tmp / "dist").glob("budgetspan-*.whl")
    env_dir = tmp / "venv"
    venv.create(env_dir, with_pip=True)
    install = subprocess.run(
        [str(env_dir / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)],
        capture_output=True,
        text=True,
        timeout=900,
        env=CLEAN_ENV,
    )
    if install.returncode != 0 and (
        "NewConnectionError" in install.stderr or "No matching distribution" in install.stderr
    ):
        pytest.skip(f"the dependencies are neither in pip's cache nor reachable: {install.stderr[-300:]}")
    assert install.returncode == 0, install.stderr
    return env_dir


def run(env_dir: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(env_dir / "bin" / "budgetspan"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=CLEAN_ENV,
    )


def test_the_plain_install_has_no_sdk(plain_install: Path) -> None:
    probe = subprocess.run(
        [str(plain_install / "bin" / "python"), "-c", "import openai"], capture_output=True
    )
    assert probe.returncode != 0  # else the demo test below would test nothing


def test_demo_stops_with_status_2_and_the_install_command(plain_install: Path, tmp_path: Path) -> None:
    r = run(plain_install, "demo", cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert DEMO_INSTALL in r.stderr
    assert "Traceback" not in r.stderr
    assert list(tmp_path.iterdir()) == []  # no empty trace file left behind


def test_report_on_a_file_without_spans_exits_non_zero(plain_install: Path, tmp_path: Path) -> None:
    empty = tmp_path / "traces.jsonl"
    empty.write_text("")
    r = run(plain_install, "report", str(empty), cwd=tmp_path)
    assert r.returncode != 0, r.stdout


def test_packaged_assets_equal_the_repositorys(plain_install: Path, tmp_path: Path) -> None:
    r = run(plain_install, "assets", str(tmp_path / "out"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out"
    written = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert written == repo_assets()
