"""The floor plan: every module of ``picofleet`` imports only from its own package or from a
lower floor. The order is written once, here; README "Layout" explains it.

Imports are read from the source (``ast``), including the ones inside functions and under
``TYPE_CHECKING``, so a lazy import cannot hide an upward dependency."""

from __future__ import annotations

import ast
from pathlib import Path

import picofleet

ROOT = Path(picofleet.__file__).resolve().parent

# Bottom up. A package may import from any lower floor, never from its own floor's other
# packages nor from a higher one.
FLOORS: list[set[str]] = [
    {"core"},  # the contract: settings, topics, credentials, db, logs, files, runtime
    {"broker", "bridge", "security"},  # stand on the contract, not on each other
    {"web"},  # the HTTP app's own routes and the context areas get (HubContext)
    {"ota", "usb", "ops", "analytics", "release", "sim", "homeassistant"},  # the areas
    {"areas"},  # the list of areas, read by the two modules above it
    {"hub"},  # the assembly: database, broker, bridge, areas, HTTP
    {"cli"},  # the root CLI: ``picofleet``
    {"__main__"},
]
FLOOR = {pkg: i for i, floor in enumerate(FLOORS) for pkg in floor}
# MicroPython's own files, shipped as the test board's ROM: not CPython modules of ours.
FOREIGN = (ROOT / "sim" / "board" / "rom",)


def package_of(module: str) -> str | None:
    """``picofleet.ota.cli`` -> ``ota``; ``picofleet`` itself (the version) -> None."""
    parts = module.split(".")
    return parts[1] if parts[0] == "picofleet" and len(parts) > 1 else None


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    here = module_name(path).split(".")
    if path.name != "__init__.py":
        here = here[:-1]  # the package a relative import starts from
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            found.append((node.lineno, name))
            # `from picofleet import core` names a package, not an attribute
            if name == "picofleet":
                found += [(node.lineno, f"picofleet.{a.name}") for a in node.names]
    return found


def violations() -> list[str]:
    out = []
    for path in sorted(ROOT.rglob("*.py")):
        if any(path.is_relative_to(f) for f in FOREIGN):
            continue
        src = package_of(module_name(path))
        if src is None:
            continue
        assert src in FLOOR, f"{path}: package {src!r} has no floor in tests/layout/test_floors.py"
        for line, target in imports(path):
            dst = package_of(target)
            if dst is None or dst == src or target.split(".")[0] != "picofleet":
                continue
            if FLOOR.get(dst, len(FLOORS)) >= FLOOR[src]:
                rel = path.relative_to(ROOT.parent)
                out.append(f"{rel}:{line}: {src} (floor {FLOOR[src]}) imports {target}")
    return out


def test_every_import_points_down() -> None:
    assert violations() == []


def test_every_package_has_a_floor() -> None:
    packages = {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    modules = {p.stem for p in ROOT.glob("*.py")} - {"__init__"}
    assert packages | modules == set(FLOOR)


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    """The rule can fail: an upward import written into a copy of a module is reported."""
    probe = ROOT / "core" / "_floor_probe.py"
    probe.write_text("def f() -> None:\n    from picofleet.hub import run_hub  # noqa\n")
    try:
        assert violations() == [
            "picofleet/core/_floor_probe.py:2: core (floor 0) imports picofleet.hub"
        ]
    finally:
        probe.unlink()


def test_the_readme_layout_table_matches_the_floors() -> None:
    """README "Layout" names every package on the floor this test gives it, and every path
    it names exists."""
    readme = (ROOT.parent / "README.md").read_text()
    section = readme.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1:4] for line in section.splitlines() if line.startswith("| ")]
    listed: dict[str, int] = {}
    for floor, paths, _ in rows[1:]:
        for path in paths.replace("`", "").split(","):
            path = path.strip()
            assert (ROOT.parent / path).exists(), f"README names {path}, which does not exist"
            parts = path.rstrip("/").removesuffix(".py").split("/")
            if parts[0] == "picofleet" and len(parts) == 2:
                listed[parts[1]] = int(floor)
    assert listed == {pkg: i for pkg, i in FLOOR.items() if pkg != "__main__"}
