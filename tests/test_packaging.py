"""What a user installing aioc4 (or depending on it) gets besides the code."""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_the_package_is_marked_as_typed_and_ships_the_marker() -> None:
    """Without `py.typed`, a caller's `mypy --strict` reports "missing library stubs or py.typed marker"."""
    assert resources.files("aioc4").joinpath("py.typed").is_file()
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    assert "py.typed" in project["tool"]["setuptools"]["package-data"]["aioc4"]


def test_the_declared_license_is_in_the_repository() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"
    assert "LICENSE" in project["license-files"]
    text = (REPO_ROOT / "LICENSE").read_text()
    assert "Apache License" in text
    assert "Version 2.0, January 2004" in text
