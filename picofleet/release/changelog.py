"""CHANGELOG.md (Keep a Changelog, kept by hand): release sections and migration notes.

A release section starts with ``## [X.Y.Z] - YYYY-MM-DD``; every ``sql/NNNN_name.sql`` a
release adds is named in its ``### Migrations`` list, so an operator upgrading a Pi knows what
``picofleet db migrate`` will apply.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_HEADING = re.compile(r"^## \[(?P<version>[^\]]+)\]", re.MULTILINE)
MIGRATION_NAME = re.compile(r"^\d{4}_[A-Za-z0-9_]+\.sql$")


def versions(text: str) -> list[str]:
    """Release headings in file order (``Unreleased`` included)."""
    return [m.group("version") for m in _HEADING.finditer(text)]


def section(text: str, version: str) -> str | None:
    """The body of ``## [version]`` up to the next release heading, or None."""
    matches = list(_HEADING.finditer(text))
    for i, m in enumerate(matches):
        if m.group("version") == version:
            end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
            body = text[m.end() : end]
            return body.split("\n", 1)[1].strip() if "\n" in body else ""
    return None


def unmentioned_migrations(text: str, names: Iterable[str]) -> list[str]:
    """Migration file names (``0001_core.sql``) the changelog never mentions."""
    return sorted(n for n in names if MIGRATION_NAME.match(n) and n not in text)
