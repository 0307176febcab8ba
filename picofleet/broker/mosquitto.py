"""Mosquitto for production: config, password file, ACL and dynamic-security file generated
from the same policy.

Two listeners. Devices log in on theirs with the password file ``passwd`` (every known
device: Mosquitto stores no derived passwords; PBKDF2-SHA512, Mosquitto's ``$7$`` format) and
the ACL ``acl``; the listener replaces every client id with the username. Regenerate the files
and send SIGHUP when devices are added or blocked: on a reload Mosquitto checks every open
connection against the new password file, so a blocked device (left out of it) is cut at once.

The hub and operators log in on their own listener through Mosquitto's dynamic security
plugin (``dynamic-security.json``): it binds the operator to its client id (its username), so
nobody but the hub can take a client id the hub's sessions hold (the bridge's persistent
session above all). The plugin reads its file once, at start; the staff passwords in it change
only with the fleet secret, and a rewrite keeps each salted hash that still matches, so an
unchanged file stays byte for byte the same (deploy/mosquitto/run.sh restarts Mosquitto when
it does change).

Persistence and queue limits are set so the hub's persistent session never loses a message
silently.

During the grace period of a fleet-secret rotation Mosquitto still holds one password per
user (a second line for a user replaces the first), so each device is listed with the
password it holds: the previous secret's, unless it is ``renewed`` (re-provisioned with the
current secret's credentials, or first seen after the rotation). The hub and operator are
always listed with the current secret's passwords. When the grace ends, every device moves to
the current secret's password on the next regeneration.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import getpass
import hashlib
import hmac
import json
import secrets
import shutil
import signal
import subprocess
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Self

from picofleet.broker.policy import Policy
from picofleet.core import logs
from picofleet.core.credentials import HUB_USER, OPERATOR_USER
from picofleet.core.files import replace_file
from picofleet.core.settings import MQTT_MAX_PACKET_BYTES
from picofleet.core.tls import TlsFiles, is_loopback

_ITERATIONS = 101  # mosquitto_passwd's default for $7$ (and the dynamic security plugin's)
_SALT_BYTES = 12  # the only salt length Mosquitto accepts
DYNSEC_FILE = "dynamic-security.json"
_DYNSEC_PLUGIN = "mosquitto_dynamic_security.so"
# Where the eclipse-mosquitto image has it (compose.yaml), when this machine has none.
IMAGE_DYNSEC_PLUGIN = f"/usr/lib/{_DYNSEC_PLUGIN}"


class MosquittoUnavailable(RuntimeError):
    """The mosquitto binary is not installed."""


def password_hash(password: str, *, salt: bytes | None = None) -> str:
    salt = salt or secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, _ITERATIONS)
    return f"$7${_ITERATIONS}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def dynsec_password(
    password: str, *, salt: bytes | None = None, iterations: int = _ITERATIONS
) -> dict[str, str | int]:
    """A client's password as the dynamic security plugin stores it: salted PBKDF2-SHA512."""
    salt = salt or secrets.token_bytes(_SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return {
        "password": base64.b64encode(digest).decode(),
        "salt": base64.b64encode(salt).decode(),
        "iterations": iterations,
    }


def _stored_password(entry: object, password: str) -> dict[str, str | int] | None:
    """``entry``'s hash fields when they are ``password``'s, else None."""
    if not isinstance(entry, dict):
        return None
    try:
        salt = base64.b64decode(entry["salt"], validate=True)
        iterations = int(entry["iterations"])
        theirs = str(entry["password"])
    except (KeyError, TypeError, ValueError, binascii.Error):
        return None
    if len(salt) != _SALT_BYTES or not 0 < iterations <= 10 * _ITERATIONS:
        return None
    mine = dynsec_password(password, salt=salt, iterations=iterations)
    return mine if hmac.compare_digest(str(mine["password"]), theirs) else None


def dynsec_plugin() -> str:
    """The dynamic security plugin on this machine (Debian's multiarch lib dir, /usr/lib,
    /usr/local/lib), else where the eclipse-mosquitto image has it."""
    found = [
        *sorted(Path("/usr/lib").glob(f"*/{_DYNSEC_PLUGIN}")),
        *(Path(d) / _DYNSEC_PLUGIN for d in ("/usr/lib", "/usr/local/lib")),
    ]
    return next((str(p) for p in found if p.is_file()), IMAGE_DYNSEC_PLUGIN)


def staff_dynsec(policy: Policy, previous: str | None = None) -> str:
    """dynamic-security.json for the hub's listener: the hub (any client id) and the operator
    (bound to its username as client id), with the current secret's passwords.

    ``previous``: the file as it is; a hash in it that still matches is kept (no new salt), so
    the text only changes when a password does."""
    try:
        old = {c.get("username"): c for c in json.loads(previous or "{}").get("clients", [])}
    except (ValueError, AttributeError, TypeError):
        old = {}
    roles = policy.dynsec_roles()
    clients = []
    for user in (HUB_USER, OPERATOR_USER):
        password = policy.keys.role_password(user)
        client: dict[str, object] = {"username": user, "textname": f"picofleet {user}"}
        if user != HUB_USER:
            # The hub's sessions use many client ids (bridge replicas, tools); everyone else
            # gets one, so no one else can take over a session the hub holds.
            client["clientid"] = user
        client["roles"] = [{"rolename": user}]
        client |= _stored_password(old.get(user), password) or dynsec_password(password)
        clients.append(client)
    doc = {
        "defaultACLAccess": {
            "publishClientSend": False,
            "publishClientReceive": False,
            "subscribe": False,
            "unsubscribe": True,
        },
        "clients": clients,
        "groups": [],
        "roles": [{"rolename": name, "acls": acls} for name, acls in roles.items()],
    }
    return json.dumps(doc, indent=2) + "\n"


def admitted(policy: Policy, device_keys: Iterable[str]) -> list[str]:
    """The devices Mosquitto lists: not blocked, and not keyed like the hub's client ids (the
    devices' listener makes the key the client id, which would take over the bridge's)."""
    return sorted(
        k for k in set(device_keys) if k not in policy.blocked and policy.may_use_client_id(k, k)
    )


def device_auth(directory: Path) -> str:
    """The auth lines of a devices' listener (after its ``listener`` line)."""
    return f"""allow_anonymous false
use_username_as_clientid true
password_file {directory / "passwd"}
acl_file {directory / "acl"}
"""


def staff_auth(directory: Path, plugin: str | None = None) -> str:
    """The auth lines of a listener for the hub and operators (after its ``listener`` line).
    Every such listener loads the plugin on the same file (Mosquitto shares its state)."""
    return f"""allow_anonymous false
# The hub and the operator, their ACLs, and the operator bound to its client id.
plugin {plugin or dynsec_plugin()}
plugin_opt_config_file {directory / DYNSEC_FILE}
"""


def write_config(
    directory: Path,
    policy: Policy,
    *,
    device_keys: Iterable[str],
    bind: str,
    port: int,
    hub_port: int,
    hub_bind: str | None = None,
    renewed: Iterable[str] = (),
    max_packet: int = MQTT_MAX_PACKET_BYTES,
    plugin: str | None = None,
    tls: TlsFiles | None = None,
    tls_port: int | None = None,
    plain_bind: str | None = None,
    hub_tls: bool | None = None,
) -> Path:
    """Write mosquitto.conf, passwd, acl and dynamic-security.json into ``directory``;
    returns the conf.

    Two listeners: devices on ``port`` (password file ``passwd``), the hub and operators on
    ``hub_port`` (the dynamic security plugin, at ``plugin`` or found here; bound like
    ``bind`` unless ``hub_bind`` says otherwise).
    With ``tls``, devices connect over TLS on ``tls_port`` (on ``bind``) and in plain text on
    ``port`` bound to ``plain_bind`` (loopback by default); the hub's listener uses TLS too
    when it is not bound to loopback (``hub_tls`` says otherwise).
    ``renewed``: devices listed with the current secret's password while a rotation's grace
    period runs (every other device keeps the previous secret's until the grace ends).
    """
    directory.mkdir(parents=True, exist_ok=True)
    device_keys = sorted(set(device_keys))
    current, previous, moved = policy.keys, policy.keys.grace_keys(), set(renewed)
    devices = [
        (k, (current if previous is None or k in moved else previous).device_password(k))
        for k in admitted(policy, device_keys)
    ]
    replace_file(directory / "passwd", "".join(f"{u}:{password_hash(p)}\n" for u, p in devices))
    replace_file(directory / "acl", policy.mosquitto_acl(device_keys))
    staff = directory / DYNSEC_FILE
    before = staff.read_text() if staff.exists() else None
    if (text := staff_dynsec(policy, before)) != before:
        replace_file(staff, text)
    (directory / "passwd-hub").unlink(missing_ok=True)  # the staff's file before the plugin
    hub_bind = bind if hub_bind is None else hub_bind
    devices_auth = device_auth(directory)
    tls_lines = "" if tls is None else f"certfile {tls.cert}\nkeyfile {tls.key}\n"
    device_listeners = f"listener {port} {bind}\n{devices_auth}"
    hub_tls_lines = ""
    if tls is not None:
        device_listeners = (
            f"listener {tls_port} {bind}\n{tls_lines}{devices_auth}\n"
            "# Devices in plain text: loopback only unless opened for legacy senders.\n"
            f"listener {port} {plain_bind or '127.0.0.1'}\n{devices_auth}"
        )
        on = not is_loopback(hub_bind) if hub_tls is None else hub_tls
        hub_tls_lines = tls_lines if on else ""
    conf = f"""# GENERATED by picofleet (broker/mosquitto.py) - DO NOT MODIFY; regenerate with
# `picofleet up --broker mosquitto` or `picofleet broker config`.
# Each listener has its own users: devices cannot log in on the hub's.
per_listener_settings true
# Run as the user who generated these files (mosquitto would otherwise switch to the
# 'mosquitto' user when started as root and lose access to them).
user {getpass.getuser()}
persistence true
persistence_location {directory}/
autosave_interval 1
autosave_on_changes false
# 0 = no limit: the hub's persistent session must never drop a message silently.
max_queued_messages 0
max_queued_bytes 0
max_inflight_messages 1000
# A client announcing a bigger packet is disconnected before its body is read.
max_packet_size {max_packet}
log_dest stderr
log_type error
log_type warning
log_type notice

# Devices. The client id is the username whatever the device asks for, so no device can
# take over (and, with a clean session, wipe) another client's session: the bridge's
# persistent session and the messages queued in it above all.
{device_listeners}
# The hub (bridge replicas, each with its own client id) and operators.
listener {hub_port} {hub_bind}
{hub_tls_lines}{staff_auth(directory, plugin)}"""
    replace_file(directory / "mosquitto.conf", conf)
    return directory / "mosquitto.conf"


def binary() -> str:
    path = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if not path:
        raise MosquittoUnavailable("mosquitto is not installed (apt install mosquitto)")
    return path


class ManagedMosquitto:
    """Runs mosquitto as a child process for as long as the context is open."""

    def __init__(
        self,
        conf: Path,
        *,
        port: int,
        hub_port: int | None = None,
        host: str = "127.0.0.1",
        tls_port: int | None = None,
    ) -> None:
        self.conf = conf
        self.port = port  # devices' listener (plain: loopback when tls_port is set)
        self.hub_port = hub_port  # the hub's and operators' listener
        self.tls_port = tls_port  # devices' TLS listener
        self.host = host
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = logs.get("picofleet.broker.mosquitto")

    async def __aenter__(self) -> Self:
        if self.proc is not None:
            raise RuntimeError("ManagedMosquitto is already running")
        log = self.conf.parent / "mosquitto.log"
        self.proc = await asyncio.to_thread(self._spawn, log)
        for _ in range(100):
            if self.proc.poll() is not None:
                raise MosquittoUnavailable(
                    f"mosquitto exited with {self.proc.returncode}; see {log}"
                )
            try:
                _, w = await asyncio.open_connection(self.host, self.port)
                w.close()
                break
            except OSError:
                await asyncio.sleep(0.05)
        self._log.info("mosquitto.started", port=self.port, pid=self.proc.pid)
        return self

    def _spawn(self, log: Path) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            return subprocess.Popen([binary(), "-c", str(self.conf)], stdout=out, stderr=out)

    def reload(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGHUP)

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            await asyncio.to_thread(proc.wait, 10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
