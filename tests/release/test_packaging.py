"""Packaging metadata that drifts when nobody looks: the hand-kept package list, the lock,
the version, the changelog's migration notes. All read from files; nothing is built here."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import picofleet
from picofleet.release import changelog
from picofleet.release.bundle import CHANGELOG, LOCK_FILE, check_project_version, source_files
from tests.release.conftest import ROOT

CODE_ROOTS = ("picofleet",)


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_package_ships_in_the_wheel() -> None:
    tool = pyproject()["tool"]["setuptools"]
    listed = set(tool["packages"])
    mapped = tool.get("package-dir", {})
    found = {
        str(Path(rel).parent).replace("/", ".")
        for rel in source_files(ROOT)
        if rel.endswith("/__init__.py") and rel.split("/", 1)[0] in CODE_ROOTS
    }
    missing = sorted(found - listed)
    assert not missing, f"add to [tool.setuptools] packages in pyproject.toml: {missing}"
    for name in listed:
        directory = ROOT / mapped.get(name, name.replace(".", "/"))
        assert directory.is_dir(), f"{name}: {directory} does not exist"
        if name not in mapped:
            assert (directory / "__init__.py").is_file(), f"{name} is listed but not a package"
    assert {"picofleet.sql": "sql", "picofleet.pico_w": "pico_w"}.items() <= mapped.items()


def test_lock_pins_every_runtime_dependency() -> None:
    pins: dict[str, str] = {}
    for line in (ROOT / LOCK_FILE).read_text().splitlines():
        if line and not line.startswith("#"):
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", line
            pins[canonicalize_name(req.name)] = spec.version
    for text in pyproject()["project"]["dependencies"]:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in pins, f"{name} missing from {LOCK_FILE}: run release/lock.py"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"{LOCK_FILE} pins {name}=={pins[name]}, outside {req.specifier}: run release/lock.py"
        )


def test_versions_and_changelog_agree() -> None:
    check_project_version(ROOT, picofleet.__version__)


def test_every_migration_is_in_the_changelog() -> None:
    text = (ROOT / CHANGELOG).read_text()
    names = [p.name for p in (ROOT / "sql").glob("*.sql")]
    assert names
    missing = changelog.unmentioned_migrations(text, names)
    assert not missing, (
        f"name these migrations under '### Migrations' of the release that ships them "
        f"(or ## [Unreleased]) in {CHANGELOG}: {missing}"
    )


def test_changelog_shape() -> None:
    text = (ROOT / CHANGELOG).read_text()
    heads = changelog.versions(text)
    assert heads[0] == "Unreleased"
    released = [tuple(int(x) for x in v.split(".")) for v in heads[1:]]
    assert released == sorted(released, reverse=True), "newest release first"
    body = changelog.section(text, picofleet.__version__)
    assert body is not None and "### " in body, "a release section lists its changes"
