#!/usr/bin/env python3
"""Verify a release bundle before installing it (exit 0 = install, 1 = refused).

    python release/verify_bundle.py picofleet-X.Y.Z.tar.gz --pubkey release.pub \
        [--meta meta.json] [--version X.Y.Z]

Checks, in order: meta.json is well formed, the tarball is named for meta.version, the
signing key is the trusted one, the sha256 matches, the Ed25519 signature over that sha256
is valid. On an installed hub ``picofleet release verify`` is the same check; on a Pi with no
picofleet yet, the OpenSSL commands in picofleet/release/signing.py are.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="verify_bundle", description=__doc__.split("\n")[0])
    parser.add_argument("tarball", type=Path)
    parser.add_argument("--pubkey", type=Path, required=True, help="trusted release public key")
    parser.add_argument("--meta", type=Path, help="meta.json [beside the tarball]")
    parser.add_argument("--version", help="refuse any other version")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(ROOT))
    from picofleet.release.signing import (
        META_FILE,
        BundleMeta,
        ReleaseError,
        load_public_key,
        verify_bundle,
    )

    try:
        meta = BundleMeta.load(args.meta or args.tarball.with_name(META_FILE))
        verify_bundle(args.tarball, meta, load_public_key(args.pubkey), expect_version=args.version)
    except ReleaseError as exc:
        sys.stderr.write(f"verify_bundle: bundle refused: {exc}\n")
        return 1
    sys.stdout.write(f"ok  {args.tarball.name}  {meta.version}  sha256 {meta.sha256}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
