"""``picofleet tls init | ca | rotate-ca``: the hub's CA and server certificate.

``picofleet up`` makes them itself; ``tls init`` is for the compose shape, where the broker
and the HTTP server read the files before any hub process has run. No command prints a key.
"""

from __future__ import annotations

from typing import Annotated

import typer

from picofleet.core.command import CommandError, DataDir, settings_for

app = typer.Typer(
    help="TLS: the hub's private CA and its server certificate.", no_args_is_help=True
)


def _describe(cert_path: str) -> str:
    from cryptography import x509

    from picofleet.core.tls import TlsError

    try:
        with open(cert_path, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
    except (OSError, ValueError) as exc:
        raise CommandError(str(TlsError(f"cannot read {cert_path}: {exc}"))) from None
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        hosts = ", ".join(str(getattr(n, "value", n)) for n in names)
    except x509.ExtensionNotFound:
        hosts = "-"
    return f"valid until {cert.not_valid_after_utc:%Y-%m-%d}, for {hosts}"


@app.command("init")
def init(
    host: Annotated[
        list[str] | None,
        typer.Option("--host", help="A name or address devices use (repeat) [tls_hosts]."),
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Make the hub's CA (once) and a server certificate for the names devices use."""
    from picofleet.core.tls import TlsError, ensure_tls

    settings = settings_for(data_dir)
    if host:
        settings = settings.model_copy(update={"tls_hosts": host})
    try:
        files = ensure_tls(settings)
    except TlsError as exc:
        raise CommandError(str(exc)) from None
    typer.echo(f"CA certificate      {files.ca_cert}  (give this to devices and clients)")
    typer.echo(f"server certificate  {files.cert}  ({_describe(str(files.cert))})")
    typer.echo(f"server key          {files.key}  (mode 0600)")


@app.command("ca")
def ca(data_dir: DataDir = None) -> None:
    """Print the CA certificate (PEM) clients must trust."""
    from picofleet.core.tls import TlsError, ca_file

    try:
        typer.echo(ca_file(settings_for(data_dir)).read_text(), nl=False)
    except TlsError as exc:
        raise CommandError(str(exc)) from None


@app.command("rotate-ca")
def rotate_ca(
    yes: Annotated[bool, typer.Option("--yes", help="Devices must be re-provisioned after.")] = (
        False
    ),
    data_dir: DataDir = None,
) -> None:
    """Make a new CA and server certificate; every device needs the new CA (re-provision)."""
    from picofleet.core.tls import TlsError, ensure_tls, tls_dir

    if not yes:
        raise CommandError(
            "a new CA locks out every device holding the old one until it is re-provisioned "
            "(picofleet usb flash); run again with --yes"
        )
    settings = settings_for(data_dir)
    if settings.tls_cert is not None:
        raise CommandError("tls_cert is set: the hub uses your own certificate, not its CA")
    d = tls_dir(settings)
    for name in ("ca.pem", "ca.key", "server.pem", "server.key"):
        old = d / name
        if old.exists():
            old.replace(d / f"{name}.old")
    try:
        files = ensure_tls(settings)
    except TlsError as exc:
        raise CommandError(str(exc)) from None
    typer.echo(f"new CA certificate {files.ca_cert}; the old one is kept as ca.pem.old")
    typer.echo("next: restart the hub, then re-provision every device with the new CA")
