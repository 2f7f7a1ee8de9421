"""Dashboards, alert rules and collector configuration ship in the package: ``budgetspan/assets``
holds links to the repository's files (one copy, so nothing can drift), every one of them is
packaged, and ``budgetspan assets DIR`` writes them out byte for byte."""

from __future__ import annotations

from pathlib import Path

import pytest

from budgetspan import cli

REPO = Path(__file__).resolve().parents[2]
ASSETS = REPO / "src" / "budgetspan" / "assets"


def repo_assets() -> dict[str, bytes]:
    """What should ship: the dashboards' JSON and every file of collector-config/."""
    files = {f"dashboards/{p.name}": p.read_bytes() for p in (REPO / "dashboards").glob("*.json")}
    for p in (REPO / "collector-config").rglob("*"):
        if p.is_file():
            files[str(p.relative_to(REPO))] = p.read_bytes()
    return files


def test_every_asset_is_a_link_to_the_repositorys_file() -> None:
    expected = repo_assets()
    assert len(expected) >= 11
    for rel in expected:
        link = ASSETS / rel
        assert link.exists(), f"{rel} is not in src/budgetspan/assets (add a symlink)"
        # a link (this file or a folder above it), never a second copy
        assert any(p.is_symlink() for p in [link, *link.parents] if ASSETS in [p, *p.parents]), rel
        assert link.read_bytes() == expected[rel]


def test_package_data_globs_cover_every_asset() -> None:
    """Each asset matches one of pyproject's package-data patterns (else the wheel lacks it)."""
    import fnmatch
    import tomllib

    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"][
        "budgetspan"
    ]
    for rel in repo_assets():
        path = f"assets/{rel}"
        assert any(fnmatch.fnmatch(path, p) and path.count("/") == p.count("/") for p in patterns), path


def test_assets_command_writes_the_repositorys_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["assets", str(tmp_path)]) == 0
    written = {str(p.relative_to(tmp_path)): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert written == repo_assets()
    assert "compose.yaml" in capsys.readouterr().out
    # compose.yaml mounts ../dashboards next to collector-config: the layout holds
    assert (tmp_path / "collector-config" / ".." / "dashboards" / "budgetspan-overview.json").exists()


def test_assets_command_keeps_a_changed_file_unless_forced(tmp_path: Path) -> None:
    assert cli.main(["assets", str(tmp_path)]) == 0
    alerts = tmp_path / "collector-config" / "alerts.yml"
    alerts.write_text("# mine\n")
    assert cli.main(["assets", str(tmp_path)]) == 1
    assert alerts.read_text() == "# mine\n"
    assert cli.main(["assets", str(tmp_path), "--force"]) == 0
    assert alerts.read_bytes() == (REPO / "collector-config" / "alerts.yml").read_bytes()
