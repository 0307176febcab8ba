#!/usr/bin/env python3
"""CHANGELOG.md at release time: check a release is consistent, or print its notes.

python release/changelog.py check 0.1.0   # pyproject.toml, picofleet.__version__ and
                                          # CHANGELOG.md name 0.1.0; every sql/ file is
                                          # listed under a release's Migrations
python release/changelog.py notes 0.1.0   # that release's section (the GitHub release body)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="changelog", description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=["check", "notes"])
    parser.add_argument("version")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(ROOT))
    from picofleet.release import changelog
    from picofleet.release.bundle import CHANGELOG, check_project_version
    from picofleet.release.signing import ReleaseError

    text = (ROOT / CHANGELOG).read_text()
    if args.action == "notes":
        body = changelog.section(text, args.version)
        if body is None:
            sys.stderr.write(f"changelog: no section for {args.version}\n")
            return 1
        sys.stdout.write(body + "\n")
        return 0
    try:
        check_project_version(ROOT, args.version)
    except ReleaseError as exc:
        sys.stderr.write(f"changelog: {exc}\n")
        return 1
    missing = changelog.unmentioned_migrations(text, (p.name for p in (ROOT / "sql").iterdir()))
    if missing:
        sys.stderr.write(f"changelog: migrations not listed in {CHANGELOG}: {missing}\n")
        return 1
    sys.stdout.write(f"{args.version}: versions agree, changelog and migration notes present\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
