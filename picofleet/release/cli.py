"""``picofleet version`` and ``picofleet release keygen|verify``.

Building a bundle needs a source checkout, so it is ``make release VERSION=X.Y.Z``
(release/build_bundle.py), not a command of the installed hub; verifying one is for the Pi.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from picofleet.core.command import CommandError

release_app = typer.Typer(
    help="Signed release bundles: the release key and the check before install.",
    no_args_is_help=True,
)

AsJson = Annotated[bool, typer.Option("--json", help="JSON output.")]


def register(app: typer.Typer) -> None:
    app.command("version")(version)
    app.add_typer(release_app, name="release")


def version(as_json: AsJson = False) -> None:
    """Print the hub's version, the commit it was built from, and the firmware versions."""
    from picofleet.core.buildinfo import build_info

    info = build_info()
    if as_json:
        typer.echo(json.dumps(info.as_dict()))
        return
    typer.echo(f"picofleet {info.version}")
    typer.echo(f"commit    {info.commit} ({info.commit_source})")
    for name, fw in sorted(info.firmware.items()):
        typer.echo(f"{name:<9} {fw}")


@release_app.command("keygen")
def keygen(
    path: Annotated[Path, typer.Argument(help="Private key file to write (mode 0600).")],
    force: Annotated[bool, typer.Option("--force", help="Replace an existing key.")] = False,
) -> None:
    """Create a release signing key; its public half (PEM) is written beside it."""
    from picofleet.release.signing import ReleaseError, generate_key, key_id, public_path_for

    try:
        key = generate_key(path, force=force)
    except ReleaseError as exc:
        raise CommandError(str(exc)) from exc
    typer.echo(f"private key  {path}  (keep it in CI secrets, never on a Pi)")
    typer.echo(f"public key   {public_path_for(path)}  (install on each Pi)")
    typer.echo(f"key id       {key_id(key.public_key())}")


@release_app.command("verify")
def verify(
    tarball: Annotated[Path, typer.Argument(help="picofleet-X.Y.Z.tar.gz")],
    pubkey: Annotated[
        Path,
        typer.Option(
            "--pubkey",
            envvar="PICOFLEET_RELEASE_PUBKEY",
            help="Trusted release public key (PEM, or base64 of the raw 32 bytes).",
        ),
    ],
    meta: Annotated[Path | None, typer.Option(help="meta.json [beside the tarball].")] = None,
    expect_version: Annotated[
        str | None, typer.Option("--version", help="Refuse any other version.")
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Check a bundle's sha256 and Ed25519 signature; exit 1 and say why when refused."""
    from picofleet.release.signing import (
        META_FILE,
        BundleMeta,
        ReleaseError,
        load_public_key,
        verify_bundle,
    )

    meta_path = meta or tarball.with_name(META_FILE)
    try:
        info = BundleMeta.load(meta_path)
        verify_bundle(tarball, info, load_public_key(pubkey), expect_version=expect_version)
    except ReleaseError as exc:
        raise CommandError(f"bundle refused: {exc}") from exc
    if as_json:
        typer.echo(json.dumps({"ok": True, "version": info.version, "sha256": info.sha256}))
    else:
        typer.echo(f"ok  {tarball.name}  {info.version}  sha256 {info.sha256}  key {info.key_id}")
