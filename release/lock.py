#!/usr/bin/env python3
"""Write release/requirements.lock: the runtime dependency closure of picofleet, pinned.

    .venv/bin/python release/lock.py            # rewrite the lock from this environment
    .venv/bin/python release/lock.py --check    # exit 1 if the lock is stale

Pins are the versions installed here (the ones the test suite ran against). A requirement
with an environment marker (pgserver: x86_64/arm64 only) keeps its marker, and so does
everything reachable only through it, so the same lock installs on the Pi (aarch64).
"""

from __future__ import annotations

import argparse
import sys
from importlib import metadata
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "release" / "requirements.lock"
HEADER = (
    "# GENERATED - DO NOT MODIFY, regenerate with: .venv/bin/python release/lock.py\n"
    "# Runtime dependencies of picofleet, pinned to the versions the tests ran against.\n"
)


def _requirements(dist: str) -> list[Requirement]:
    return [Requirement(r) for r in metadata.requires(dist) or ()]


def closure(root: str = "picofleet") -> dict[str, tuple[str, set[str | None]]]:
    """name -> (installed version, markers of the top-level requirements it is reachable
    through); None among the markers means reachable unconditionally."""
    found: dict[str, tuple[str, set[str | None]]] = {}
    queue: list[tuple[Requirement, str | None]] = []
    for req in _requirements(root):
        marker = str(req.marker) if req.marker is not None else None
        if marker is None or "extra" not in marker:  # optional-dependencies are not runtime
            queue.append((req, marker))
    while queue:
        req, via = queue.pop()
        name = canonicalize_name(req.name)
        try:
            version = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            if via is not None and not Marker(via).evaluate():
                continue  # for another platform and not installed here: nothing to pin
            raise SystemExit(f"lock: {req.name} is required but not installed") from None
        seen = found.get(name)
        if seen is not None and via in seen[1]:
            continue
        found[name] = (version, (seen[1] if seen else set()) | {via})
        extras = req.extras or {""}
        for sub in _requirements(req.name):
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in extras):
                queue.append((sub, via))
    return found


def render(found: dict[str, tuple[str, set[str | None]]]) -> str:
    lines = []
    for name in sorted(found):
        version, via = found[name]
        markers = sorted(m for m in via if m is not None)
        line = f"{name}=={version}"
        if None not in via and markers:
            line += " ; " + " or ".join(f"({m})" if len(markers) > 1 else m for m in markers)
        lines.append(line)
    return HEADER + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lock", description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="fail if the lock is stale")
    args = parser.parse_args(argv)
    text = render(closure())
    if args.check:
        if not LOCK.is_file() or LOCK.read_text() != text:
            sys.stderr.write(f"lock: {LOCK} is stale; run release/lock.py\n")
            return 1
        return 0
    LOCK.write_text(text)
    sys.stdout.write(f"wrote {LOCK} ({len(text.splitlines()) - 2} pins)\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
