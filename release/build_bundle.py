#!/usr/bin/env python3
"""Build the signed Pi release bundle: ``make release VERSION=X.Y.Z`` runs this.

    python release/build_bundle.py --version 0.1.0 [--key release.key] [--out dist/release]

Writes ``picofleet-X.Y.Z.tar.gz``, ``meta.json`` and the wheel to ``--out`` and prints the
sha256. The key comes from ``--key`` or PICOFLEET_RELEASE_KEY (a path or the PEM text).
Same tree + same SOURCE_DATE_EPOCH (default: HEAD's commit time) -> same sha256.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="build_bundle", description=__doc__.split("\n")[0])
    parser.add_argument("--version", required=True, help="X.Y.Z (must match pyproject.toml)")
    parser.add_argument("--key", type=Path, help="release private key (PEM Ed25519)")
    parser.add_argument("--out", type=Path, default=ROOT / "dist" / "release")
    parser.add_argument("--source", type=Path, default=ROOT, help="checkout to build from")
    parser.add_argument(
        "--allow-dirty", action="store_true", help="build from uncommitted changes (testing)"
    )
    args = parser.parse_args(argv)

    sys.path.insert(0, str(ROOT))  # run from a checkout without installing it first
    from picofleet.release.bundle import build_bundle
    from picofleet.release.signing import ReleaseError, release_key

    try:
        built = build_bundle(
            args.source,
            args.version,
            args.out,
            release_key(args.key),
            allow_dirty=args.allow_dirty,
        )
    except ReleaseError as exc:
        sys.stderr.write(f"build_bundle: {exc}\n")
        return 1
    sys.stdout.write(
        f"bundle  {built.tarball}\n"
        f"meta    {built.meta_path}\n"
        f"wheel   {built.wheel}\n"
        f"sha256  {built.meta.sha256}\n"
        f"commit  {built.meta.commit}\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
