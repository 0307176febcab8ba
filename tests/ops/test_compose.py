"""The deployment files checked against the code they run, without a Docker engine.

compose.yaml, the Dockerfile and the systemd units name CLI commands, settings, files, volumes
and each other; every such name must exist. The parts that can run here do: the generated
Mosquitto files on a real Mosquitto (deploy/mosquitto/run.sh reloading it as devices come and
go), the image's HEALTHCHECK against a real `serve http` role, and `systemd-analyze verify`
where it is installed.
"""

from __future__ import annotations

import asyncio
import fnmatch
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest
import typer
import yaml
from pydantic import AliasChoices
from pydantic_settings import BaseSettings
from typer.main import get_command
from typer.testing import CliRunner

from picofleet import cli
from picofleet.broker import mosquitto
from picofleet.broker.policy import Policy
from picofleet.core import db
from picofleet.core.buildinfo import COMMIT_ENV
from picofleet.core.credentials import HUB_USER, OPERATOR_USER, FleetKeys
from picofleet.core.files import replace_file
from picofleet.core.settings import Settings
from picofleet.core.topics import Topics
from tests.conftest import mosquitto_available, need, running_hub
from tests.helpers import SECRET, Client, check_schema, free_port, wait_for
from tests.security.peers import Peer

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
ENV_EXAMPLE = ROOT / "deploy" / "compose.env.example"
UNITS = ROOT / "deploy" / "systemd"
DEPLOY_SH = ROOT / "deploy" / "deploy.sh"
RUN_SH = ROOT / "deploy" / "mosquitto" / "run.sh"
RELEASE_WF = ROOT / ".github" / "workflows" / "release.yml"
# Interpolated by compose itself (which image to run), never read by picofleet.
COMPOSE_ONLY_VARS = {"PICOFLEET_IMAGE", "PICOFLEET_TAG"}
_VAR = re.compile(r"\b(PICOFLEET_[A-Z0-9_]+)")
_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)")


# -- the files, parsed ---------------------------------------------------------------------------
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose()["services"]
    return found


def ours(svc: dict[str, Any]) -> bool:
    return "build" in svc


def env_keys(svc: dict[str, Any]) -> set[str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        return {item.split("=", 1)[0] for item in env}
    return set(env)


def env_value(svc: dict[str, Any], key: str) -> str | None:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env if "=" in item)
    value = env.get(key)
    return None if value is None else str(value)


def example_env() -> dict[str, str]:
    """deploy/compose.env.example: its settings, commented-out optional ones included."""
    out = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        m = re.match(r"^#?\s*([A-Z][A-Z0-9_]*)=(.*)$", line)
        if m:
            out[m[1]] = m[2]
    return out


def volume_mounts(svc: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, target) of each volume, short or long syntax."""
    out = []
    for v in svc.get("volumes", []):
        if isinstance(v, dict):
            out.append((str(v.get("source", "")), str(v["target"])))
        else:
            parts = str(v).split(":")
            out.append((parts[0], parts[1]) if len(parts) > 1 else ("", parts[0]))
    return out


def depends(svc: dict[str, Any]) -> dict[str, str]:
    dep = svc.get("depends_on") or {}
    if isinstance(dep, list):
        return {name: "service_started" for name in dep}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in dep.items()}


@dataclass
class Instruction:
    keyword: str
    args: str
    stage: int


def dockerfile() -> list[Instruction]:
    """Instructions with continuation lines joined and comments left out."""
    out: list[Instruction] = []
    stage, pending = -1, ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        text = (pending + line).strip()
        pending = ""
        keyword, _, args = text.partition(" ")
        if keyword.upper() == "FROM":
            stage += 1
        out.append(Instruction(keyword.upper(), args.strip(), stage))
    return out


def build_args(stage: int | None = None) -> dict[str, str]:
    """ARG names (with defaults) of one stage, or of the preamble and every stage."""
    found = {}
    for ins in dockerfile():
        if ins.keyword == "ARG" and (stage is None or ins.stage == stage):
            name, _, default = ins.args.partition("=")
            found[name] = default.strip('"')
    return found


def final_stage() -> int:
    return max(ins.stage for ins in dockerfile())


def env_of(ins: Instruction) -> dict[str, str]:
    return dict(part.split("=", 1) for part in shlex.split(ins.args))


def image_uid_gid() -> tuple[int, int]:
    (user,) = [i.args for i in dockerfile() if i.keyword == "USER"]
    uid, _, gid = user.partition(":")
    return int(uid), int(gid or uid)


def units() -> dict[str, dict[str, list[str]]]:
    """deploy/systemd/*.service as {name: {"Section.Key": [values]}}."""
    found = {}
    for path in sorted(UNITS.glob("*.service")):
        keys: dict[str, list[str]] = {}
        section = ""
        for line in path.read_text().splitlines():
            line = line.strip()
            if not line or line.startswith(("#", ";")):
                continue
            if line.startswith("["):
                section = line.strip("[]")
                continue
            key, _, value = line.partition("=")
            keys.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
        found[path.name] = keys
    return found


def deploy_default(var: str) -> str:
    m = re.search(r"\$\{" + var + r":-([^}]+)\}", DEPLOY_SH.read_text())
    assert m, f"deploy.sh has no default for {var}"
    return m[1]


# -- what the code accepts -----------------------------------------------------------------------
def settings_env_names() -> set[str]:
    """Every environment variable a settings class of the hub reads, plus the image's commit."""
    from picofleet.analytics._settings import AnalyticsSettings
    from picofleet.ota.config import OtaSettings
    from picofleet.usb import UsbSettings

    classes: list[type[BaseSettings]] = [Settings, UsbSettings, OtaSettings, AnalyticsSettings]
    names = {COMMIT_ENV}
    for cls in classes:
        prefix = str(cls.model_config.get("env_prefix", ""))
        for name, field in cls.model_fields.items():
            alias = field.validation_alias
            if isinstance(alias, AliasChoices):
                names |= {c.upper() for c in alias.choices if isinstance(c, str)}
            elif isinstance(alias, str):
                names.add(alias.upper())
            else:
                names.add(f"{prefix}{name}".upper())
    return names


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    if "broker" not in {g.name for g in cli.app.registered_groups}:
        cli._register_extensions()
    return cli.app


def assert_cli_command(app: typer.Typer, args: list[str], where: str) -> None:
    """``picofleet ARGS`` names a real command whose options all exist."""
    res = CliRunner().invoke(app, [*args, "--help"])
    assert res.exit_code == 0, f"{where}: `picofleet {shlex.join(args)}` is not a command:\n{res}"
    if args and args[0] == "serve":  # the role is a plain argument: check it by name
        serve = get_command(app).commands["serve"]  # type: ignore[attr-defined]
        (role,) = [p for p in serve.params if p.name == "role"]
        roles = re.findall(r"[\w-]+", str(getattr(role, "help", "")))
        assert len(args) > 1 and args[1] in roles, f"{where}: unknown role in {args} ({roles})"


# -- compose.yaml --------------------------------------------------------------------------------
def test_compose_is_valid_compose_spec() -> None:
    need(importlib.util.find_spec("check_jsonschema") is not None, "check-jsonschema")
    check_schema("vendor.compose-spec", COMPOSE)


def test_compose_has_the_production_shape() -> None:
    svcs = services()
    assert {"postgres", "mosquitto", "migrate", "broker-config", "bridge", "http"} <= set(svcs)
    commands = {name: svc.get("command") for name, svc in svcs.items() if ours(svc)}
    assert commands["migrate"] == ["db", "migrate"]
    assert commands["bridge"][:2] == ["serve", "bridge"]
    assert commands["http"] == ["serve", "http"]
    assert commands["broker-config"][:2] == ["broker", "config"]
    assert "--watch" in commands["broker-config"]  # devices registered later get in too


# Monitoring (profile grafana) has no Docker Official Image: the projects publish their own.
VENDOR_IMAGES = {"prom/prometheus", "grafana/grafana-oss"}


def test_images_are_pinned_official_or_ours() -> None:
    built = {name: svc for name, svc in services().items() if ours(svc)}
    assert built, "no service runs the picofleet image"
    for name, svc in services().items():
        if ours(svc):
            build = svc["build"]
            build = {"context": build} if isinstance(build, str) else build
            assert build["context"] == ".", name
            assert build.get("dockerfile", "Dockerfile") == "Dockerfile", name
            assert set(build.get("args", {})) <= set(build_args()), f"{name}: unknown build arg"
            assert svc.get("entrypoint") is None, f"{name} must keep the image's entrypoint"
            continue
        image = str(svc["image"])
        repo, _, tag = image.partition(":")
        # Docker Official Images have no namespace, or the project's own vendor image where
        # there is no official one; the tag pins a version (never latest).
        assert "/" not in repo or repo in VENDOR_IMAGES, f"{name}: {image} is not official"
        assert re.fullmatch(r"v?\d+(\.\d+)*(-[\w.]+)?(@sha256:[0-9a-f]{64})?", tag), (
            f"{name}: {image} is not pinned to a version"
        )
    assert len({svc["image"] for svc in built.values()}) == 1, "one image for every hub role"


def test_every_command_of_our_image_is_a_cli_command(app: typer.Typer) -> None:
    for name, svc in services().items():
        if ours(svc):
            command = svc.get("command")
            assert isinstance(command, list) and command, f"{name}: give the command as a list"
            assert_cli_command(app, [str(c) for c in command], f"compose service {name}")


def test_the_command_check_catches_mistakes(app: typer.Typer) -> None:
    for wrong in (["serve", "bridg"], ["brokr", "config"], ["broker", "config", "--wach"]):
        with pytest.raises(AssertionError):
            assert_cli_command(app, wrong, "test")


def test_picofleet_variables_are_settings() -> None:
    known = settings_env_names()
    named: dict[str, str] = {}
    for name, svc in services().items():
        named |= {k: f"compose service {name}" for k in env_keys(svc)}
    for var in _INTERPOLATION.findall(COMPOSE.read_text()):
        if var not in COMPOSE_ONLY_VARS:
            named[var] = "compose.yaml interpolation"
    named |= {k: ENV_EXAMPLE.name for k in example_env()}
    for ins in dockerfile():  # what the image's processes read (ARGs are build-time only)
        if ins.keyword in ("ENV", "HEALTHCHECK", "CMD", "ENTRYPOINT"):
            named |= {k: f"Dockerfile {ins.keyword}" for k in _VAR.findall(ins.args)}
    for unit, keys in units().items():
        for value in keys.get("Service.Environment", []):
            named |= {k: unit for k in _VAR.findall(value)}
    unknown = {k: where for k, where in named.items() if k.startswith("PICOFLEET_")}
    unknown = {k: where for k, where in unknown.items() if k not in known}
    assert not unknown, f"not read by any settings class: {unknown}"


def test_hub_services_get_what_serve_needs() -> None:
    example = example_env()
    assert {"POSTGRES_PASSWORD", "PICOFLEET_DATABASE_URL", "PICOFLEET_PROVISION_SECRET"} <= set(
        example
    )
    svcs = services()
    for name, svc in svcs.items():
        if not ours(svc):
            continue
        assert svc.get("env_file") == ["deploy/compose.env"], name
        # The fleet secret comes from the env file: `broker config` never makes a new one.
        available = env_keys(svc) | set(example)
        for var in ("PICOFLEET_DATABASE_URL", "PICOFLEET_MQTT_URL", "PICOFLEET_PROVISION_SECRET"):
            assert var in available, f"{name} lacks {var}"
        mounts = dict((t, s) for s, t in volume_mounts(svc))
        assert env_value(svc, "PICOFLEET_DATA_DIR") in mounts, f"{name}: data dir not a volume"

    # The URLs point at the services that serve them.
    pg = svcs["postgres"]
    url = urlsplit(example["PICOFLEET_DATABASE_URL"])
    assert url.scheme in ("postgresql", "postgres") and url.hostname == "postgres"
    assert url.port == 5432
    assert url.username == env_value(pg, "POSTGRES_USER")
    assert url.path == f"/{env_value(pg, 'POSTGRES_DATABASE') or env_value(pg, 'POSTGRES_DB')}"
    for name, svc in svcs.items():
        mqtt = env_value(svc, "PICOFLEET_MQTT_URL")
        if mqtt:
            parts = urlsplit(mqtt)
            assert parts.hostname in svcs, f"{name}: {mqtt} names no service"
            # The hub's listener `broker config` writes by default (devices' port + 1).
            assert parts.port == 1884


def test_env_file_is_gitignored_and_only_the_example_is_committed() -> None:
    ignored = subprocess.run(
        ["git", "-C", str(ROOT), "check-ignore", "-q", "deploy/compose.env"], check=False
    )
    assert ignored.returncode == 0, "deploy/compose.env holds secrets: it must be gitignored"
    example = example_env()
    for var in ("POSTGRES_PASSWORD", "PICOFLEET_PROVISION_SECRET"):
        assert example[var] == "", f"{var} must be left for the operator to fill in"
    assert "deploy/compose.env" in DOCKERIGNORE.read_text().split()


def test_volumes_and_dependencies_exist() -> None:
    spec = compose()
    svcs = services()
    declared = set(spec.get("volumes") or {})
    used = set()
    for name, svc in svcs.items():
        for source, target in volume_mounts(svc):
            assert target.startswith("/"), f"{name}: {target}"
            if source.startswith((".", "/")):
                assert (ROOT / source).resolve().exists(), f"{name}: no {source} to mount"
            elif source:
                assert source in declared, f"{name}: volume {source} is not declared"
                used.add(source)
        for other, condition in depends(svc).items():
            assert other in svcs, f"{name} depends on unknown service {other}"
            assert condition in (
                "service_started",
                "service_healthy",
                "service_completed_successfully",
            )
            target = svcs[other]
            if condition == "service_healthy":
                hc = target.get("healthcheck") or {}
                assert not hc.get("disable"), f"{name} waits for {other}, which has no check"
                assert hc.get("test") or ours(target), f"{other} has no healthcheck"
            if condition == "service_completed_successfully":
                # Any other policy would start the one-shot again after it succeeded.
                assert target.get("restart") in ("no", None), f"{other} must not restart"
    assert used == declared, f"declared but unused volumes: {declared - used}"

    order: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"dependency cycle: {(*path, name)}"
        for other in depends(svcs[name]):
            visit(other, (*path, name))
        if name not in order:
            order.append(name)

    for name in svcs:
        visit(name, ())
    assert order.index("migrate") < order.index("bridge")
    assert order.index("broker-config") < order.index("mosquitto") < order.index("bridge")


def test_mosquitto_reads_the_files_broker_config_writes() -> None:
    svcs = services()
    writer, broker = svcs["broker-config"], svcs["mosquitto"]
    out = writer["command"][writer["command"].index("--out") + 1]
    # mosquitto.conf names passwd and acl by absolute path: the same path in both containers.
    assert broker["command"][0] == out
    shared = {s for s, t in volume_mounts(writer) if t == out}
    assert shared and shared == {s for s, t in volume_mounts(broker) if t == out}
    assert writer["healthcheck"]["test"][-1] == f"{out}/mosquitto.conf"
    # run.sh is mounted where the entrypoint runs it.
    script = broker["entrypoint"][-1]
    assert (str(RUN_SH.relative_to(ROOT)), script) in {
        (s.removeprefix("./"), t) for s, t in volume_mounts(broker)
    }
    # Mosquitto runs as the image's user: it reads the 0600 files the hub's user writes.
    uid, gid = image_uid_gid()
    assert broker["user"] == f"{uid}:{gid}"
    published = [str(p).rsplit(":", 1)[-1] for p in broker.get("ports", [])]
    # Devices reach Mosquitto over TLS only; plain 1883 stays inside the container (issue 17).
    tls_port = writer["command"][writer["command"].index("--tls-port") + 1]
    assert published == [tls_port]


# -- Dockerfile ----------------------------------------------------------------------------------
def _ignored(rel: str, patterns: list[str]) -> bool:
    parts = rel.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pat in patterns:
        for cand in candidates:
            if fnmatch.fnmatch(cand, pat):
                return True
            if pat.startswith("**/") and fnmatch.fnmatch(cand.split("/")[-1], pat[3:]):
                return True
    return False


def test_dockerfile_copies_what_the_wheel_is_built_from() -> None:
    ignore = [
        ln.strip()
        for ln in DOCKERIGNORE.read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert {".git", ".venv", "**/node_modules", "picofleet-data"} <= set(ignore)
    copied: set[str] = set()
    for ins in dockerfile():
        if ins.keyword not in ("COPY", "ADD"):
            continue
        args = shlex.split(ins.args)
        assert ins.keyword == "COPY", "COPY, not ADD"
        if any(a.startswith("--from") for a in args):
            continue
        sources = [a for a in args[:-1] if not a.startswith("--")]
        for src in sources:
            assert (ROOT / src).exists(), f"Dockerfile copies {src}, which does not exist"
            assert not _ignored(src, ignore), f".dockerignore leaves {src} out of the context"
            copied.add(src.rstrip("/"))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    setup = project["tool"]["setuptools"]
    dirs = setup.get("package-dir", {})
    for package in setup["packages"]:
        path = dirs.get(package, package.replace(".", "/"))
        assert path.split("/")[0] in copied, f"package {package} ({path}) is not copied"
    assert project["project"]["readme"] in copied
    assert "release/requirements.lock" in copied


def test_dockerfile_runs_the_cli_as_a_non_root_user(app: typer.Typer) -> None:
    instructions = dockerfile()
    final = final_stage()
    default_base = build_args(-1).get("PYTHON_IMAGE", "")
    for ins in instructions:
        if ins.keyword == "FROM":
            base = ins.args.split()[0].replace("${PYTHON_IMAGE}", default_base)
            assert base.startswith("python:3.11-slim"), base
    (entry,) = [json.loads(i.args) for i in instructions if i.keyword == "ENTRYPOINT"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert entry == ["picofleet"] and "picofleet" in scripts
    (user,) = [i for i in instructions if i.keyword == "USER"]
    assert user.stage == final
    uid, gid = image_uid_gid()
    assert uid != 0 and gid != 0
    assert f"--uid {uid}" in " ".join(i.args for i in instructions if i.keyword == "RUN")
    # The commit given at build time reaches `picofleet version` through the environment.
    assert COMMIT_ENV in build_args(final)
    env: dict[str, str] = {}
    for ins in instructions:
        if ins.keyword == "ENV" and ins.stage == final:
            env |= env_of(ins)
    assert env[COMMIT_ENV] == "${" + COMMIT_ENV + "}"
    data_dir = env["PICOFLEET_DATA_DIR"]
    assert any(data_dir in i.args for i in instructions if i.keyword == "RUN")  # owned dir
    runs = [i.args for i in instructions if i.keyword == "RUN"]
    invoked = [m.split() for r in runs for m in re.findall(r"bin/picofleet ([^&;|]+)", r)]
    assert invoked, "the build should prove the installed CLI starts"
    for args in invoked:
        assert_cli_command(app, args, "Dockerfile RUN")


def test_release_workflow_builds_this_dockerfile() -> None:
    wf = yaml.safe_load(RELEASE_WF.read_text())
    (build,) = [
        s for s in wf["jobs"]["image"]["steps"] if "build-push-action" in str(s.get("uses", ""))
    ]
    assert build["with"]["file"] == "Dockerfile" and build["with"]["context"] == "."
    passed = {
        line.split("=", 1)[0].strip()
        for line in str(build["with"]["build-args"]).splitlines()
        if "=" in line
    }
    assert COMMIT_ENV in passed and passed <= set(build_args())


async def test_image_healthcheck_passes_against_serve_http(settings: Settings) -> None:
    (hc,) = [i.args for i in dockerfile() if i.keyword == "HEALTHCHECK"]
    command = json.loads(hc[hc.index("CMD") + 3 :].strip())
    assert "/health" in " ".join(command)
    command = [sys.executable if c == "python" else c for c in command]

    def check(port: int) -> int:
        env = {**os.environ, "PICOFLEET_HTTP_PORT": str(port)}
        return subprocess.run(command, env=env, capture_output=True, timeout=30).returncode

    # `serve http` as compose runs it: no embedded broker, an MQTT URL it never needs to reach.
    http_only = settings.model_copy(update={"mqtt_url": f"mqtt://127.0.0.1:{free_port()}"})
    async with running_hub(http_only, roles=frozenset({"http"}), embedded_broker=False):
        assert await asyncio.to_thread(check, settings.http_port) == 0
    assert await asyncio.to_thread(check, free_port()) != 0


# -- systemd units -------------------------------------------------------------------------------
def test_units_agree_with_deploy_sh(app: typer.Typer) -> None:
    found = units()
    restarted = deploy_default("PICOFLEET_SERVICES").split()
    assert set(restarted) <= set(found), f"deploy.sh restarts {restarted}; units: {set(found)}"
    prefix = deploy_default("PICOFLEET_PREFIX")
    binary = f"{prefix}/current/venv/bin/picofleet"
    # The same binary deploy.sh's own smoke test runs after switching `current`.
    smoke = deploy_default("PICOFLEET_SMOKE_CMD").replace('\\"', "").replace("$prefix", prefix)
    assert shlex.split(smoke)[0] == binary, smoke
    for name, keys in found.items():
        (start,) = keys["Service.ExecStart"]
        argv = shlex.split(start)
        assert argv[0] == binary, f"{name} runs {argv[0]}, deploy.sh installs {binary}"
        assert_cli_command(app, argv[1:], name)
        env = dict(v.split("=", 1) for v in keys.get("Service.Environment", []))
        data_dir = env["PICOFLEET_DATA_DIR"]
        assert data_dir.startswith("/var/lib/")
        assert keys["Service.User"][0] not in ("root", "0")
        assert keys["Service.Restart"] == ["on-failure"]
        assert keys["Service.NoNewPrivileges"] == ["yes"]
        assert keys["Service.ProtectSystem"] == ["strict"]
        assert data_dir in " ".join(keys["Service.ReadWritePaths"]).split()
        assert keys["Service.StateDirectory"] == [data_dir.removeprefix("/var/lib/")]
        assert keys["Install.WantedBy"] == ["multi-user.target"]


def test_units_pass_systemd_analyze(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    need(analyze is not None, "systemd-analyze (apt install systemd)")
    assert analyze is not None
    picofleet = Path(sys.executable).with_name("picofleet")
    binary = f"{deploy_default('PICOFLEET_PREFIX')}/current/venv/bin/picofleet"
    paths = []
    for unit in sorted(UNITS.glob("*.service")):  # verify wants ExecStart to exist
        copy = tmp_path / unit.name
        copy.write_text(unit.read_text().replace(binary, str(picofleet)))
        paths.append(str(copy))
    res = subprocess.run(
        [analyze, "verify", *paths], capture_output=True, text=True, timeout=60, check=False
    )
    ours_said = [ln for ln in (res.stdout + res.stderr).splitlines() if str(tmp_path) in ln]
    assert res.returncode == 0 and not ours_said, res.stdout + res.stderr


# -- `picofleet broker config` on a real Mosquitto -------------------------------------------------
def cli_env(db_url: str, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PICOFLEET_")}
    env.update(
        PICOFLEET_DATABASE_URL=db_url,
        PICOFLEET_PROVISION_SECRET=SECRET,
        PICOFLEET_DATA_DIR=str(tmp_path / "data"),
        PICOFLEET_LOG_FORMAT="json",
        PATH=f"{os.environ.get('PATH', '')}:/usr/sbin:/usr/local/sbin",  # mosquitto
    )
    return env


def broker_config(out: Path, port: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "picofleet",
        "broker",
        "config",
        "--out",
        str(out),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        *extra,
    ]


async def add_device(db_url: str, key: str, *, blocked: bool = False) -> None:
    await db.register_device(db_url, key)
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute("UPDATE device SET blocked = $2 WHERE device_key = $1", key, blocked)
    finally:
        await conn.close()


def can_connect(port: int, user: str, password: str, client_id: str = "") -> bool:
    client = Client(port, user, password, client_id)
    ok = client.connect(timeout=5)
    if ok:
        client.close()
    return ok


async def test_broker_config_writes_files_mosquitto_accepts(
    db_url: str, tmp_path: Path, keys: FleetKeys
) -> None:
    need(mosquitto_available(), "mosquitto")
    await add_device(db_url, "AI-ABCDE1")
    await add_device(db_url, "7")  # a legacy numeric sender: may publish on picofleet/ingest
    await add_device(db_url, "AI-BLOCKED", blocked=True)
    out, port = tmp_path / "broker", free_port()
    res = await asyncio.to_thread(
        subprocess.run,
        broker_config(out, port, "--device", "bench-1"),
        env=cli_env(db_url, tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert "3 device(s) admitted" in res.stdout
    passwd = out / "passwd"
    assert stat.S_IMODE(passwd.stat().st_mode) == 0o600
    users = {line.split(":", 1)[0] for line in passwd.read_text().splitlines()}
    assert users == {"AI-ABCDE1", "7", "bench-1"}
    dynsec = out / mosquitto.DYNSEC_FILE
    assert stat.S_IMODE(dynsec.stat().st_mode) == 0o600
    staff = {c["username"]: c for c in json.loads(dynsec.read_text())["clients"]}
    assert set(staff) == {HUB_USER, OPERATOR_USER}
    assert staff[OPERATOR_USER]["clientid"] == OPERATOR_USER and "clientid" not in staff[HUB_USER]

    async with mosquitto.ManagedMosquitto(out / "mosquitto.conf", port=port):
        good = keys.device_password("AI-ABCDE1")
        for user, password, ok in [
            ("AI-ABCDE1", good, True),
            ("bench-1", keys.device_password("bench-1"), True),
            ("AI-ABCDE1", keys.device_password("AI-OTHER"), False),
            ("AI-BLOCKED", keys.device_password("AI-BLOCKED"), False),
            ("AI-UNKNOWN", keys.device_password("AI-UNKNOWN"), False),
            (None, None, False),
        ]:
            client = Client(port, user, password)
            assert await asyncio.to_thread(client.connect) is ok, user
            if ok:
                client.close()

        # The ACL generated from the device table: a numeric (legacy) sender may use the
        # ingest topic. tests/security/test_broker_matrix.py covers the rest of the policy.
        op = Client(port + 1, OPERATOR_USER, keys.role_password(OPERATOR_USER), OPERATOR_USER)
        dev = Client(port, "AI-ABCDE1", good)
        legacy = Client(port, "7", keys.device_password("7"))
        for c in (op, dev, legacy):
            assert await asyncio.to_thread(c.connect)
        try:
            await asyncio.to_thread(op.subscribe, "picofleet/#")
            await asyncio.to_thread(legacy.publish, "picofleet/ingest", b"{}")
            await asyncio.to_thread(dev.publish, "picofleet/devices/AI-ABCDE1/telemetry", b"{}")

            async def arrived() -> list[str]:
                return [t for t, _ in op.messages]

            got = await wait_for(arrived)
            assert sorted(got) == ["picofleet/devices/AI-ABCDE1/telemetry", "picofleet/ingest"]
        finally:
            for c in (op, dev, legacy):
                c.close()


def spawn(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(argv, env=env, stdout=out, stderr=out)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts; any still running at the end are killed."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


async def test_mosquitto_reloads_as_devices_are_registered(
    db_url: str, tmp_path: Path, keys: FleetKeys, processes: list[subprocess.Popen[bytes]]
) -> None:
    """compose.yaml's pair: `broker config --watch` rewrites, run.sh makes Mosquitto reload."""
    need(mosquitto_available(), "mosquitto")
    need(shutil.which("md5sum") is not None, "md5sum")
    out, port = tmp_path / "broker", free_port()
    env = cli_env(db_url, tmp_path)
    log = tmp_path / "processes.log"
    watcher = await asyncio.to_thread(
        spawn, broker_config(out, port, "--watch", "--interval", "0.1"), env, log
    )
    processes.append(watcher)
    # run.sh waits for the first mosquitto.conf by itself.
    runner = await asyncio.to_thread(spawn, ["sh", str(RUN_SH), str(out), "0.1"], env, log)
    processes.append(runner)

    async def listening() -> bool:
        try:
            await asyncio.to_thread(socket.create_connection, ("127.0.0.1", port), 1)
        except OSError:
            return False
        return True

    try:
        await wait_for(listening, timeout=30)
        key, password = "AI-LATE01", keys.device_password("AI-LATE01")
        assert not await asyncio.to_thread(can_connect, port, key, password)

        await add_device(db_url, key)
        await wait_for(lambda: asyncio.to_thread(can_connect, port, key, password), timeout=30)
        held = Peer(port, key, password)
        assert await held.connect()

        await add_device(db_url, key, blocked=True)

        async def refused() -> bool:
            return not await asyncio.to_thread(can_connect, port, key, password)

        async def cut() -> bool:
            return held.disconnects > 0

        await wait_for(refused, timeout=30)
        await wait_for(cut, timeout=5)  # the reload also closed the connection it held
        held.close()
        # Still the same Mosquitto: it was reloaded, not restarted.
        assert runner.poll() is None and watcher.poll() is None

        # The staff's logins change with the fleet secret (what broker-config writes after a
        # rotation): the plugin reads its file only at start, so run.sh restarts Mosquitto.
        rotated = FleetKeys(b"r" * 32)
        staff = out / mosquitto.DYNSEC_FILE
        policy = Policy(Topics("picofleet"), rotated)
        await asyncio.to_thread(replace_file, staff, mosquitto.staff_dynsec(policy))
        op = rotated.role_password(OPERATOR_USER)

        async def restarted() -> bool:
            return await asyncio.to_thread(can_connect, port + 1, OPERATOR_USER, op, OPERATOR_USER)

        await wait_for(restarted, timeout=30)
        assert not await asyncio.to_thread(
            can_connect, port + 1, OPERATOR_USER, keys.role_password(OPERATOR_USER), OPERATOR_USER
        )

        # `docker compose stop`: SIGTERM reaches Mosquitto through run.sh; both end cleanly.
        for proc in (runner, watcher):
            proc.send_signal(signal.SIGTERM)
        codes = [await asyncio.to_thread(p.wait, 30) for p in (runner, watcher)]
        assert codes == [0, 0]
        assert not await listening()
    finally:
        text = log.read_text(errors="replace")
    assert "reloading mosquitto" in text and "restarting mosquitto" in text, text
