"""What every ``picofleet`` command shares: the ``--data-dir`` option, the error a user can
act on, and the one way to build Settings (flags, then PICOFLEET_*, then the hub's record).

The root CLI (picofleet/cli.py) sets ``state`` from the command line before a command runs;
area CLIs import from here, never from the root CLI."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from picofleet.core import logs
from picofleet.core.settings import Settings

DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        envvar="PICOFLEET_DATA_DIR",
        help="Hub state: embedded database, fleet secret, keys [./picofleet-data].",
    ),
]

# Commands that run until stopped log what they do; every other one prints its answer and
# nothing else on stderr unless --verbose (or PICOFLEET_LOG_LEVEL is set).
LONG_RUNNING = frozenset({("up",), ("serve",), ("simulate",), ("tail",), ("usb", "gateway")})
VERBOSE_FLAG = "--verbose"


@dataclass
class _State:
    verbose: bool = False
    words: tuple[str, ...] = ()  # the subcommand's words, set by the root CLI


state = _State()


class CommandError(Exception):
    """A failure the user can act on; printed without a traceback."""


def _log_level(settings: Settings) -> str:
    if state.verbose or "log_level" in settings.model_fields_set:
        return settings.log_level
    long_running = any(state.words[: len(p)] == p for p in LONG_RUNNING)
    return settings.log_level if long_running else "WARNING"


def settings_for(data_dir: Path | None, *, starting: bool = False, **overrides: Any) -> Settings:
    """Flags, then PICOFLEET_* (and .env), then the endpoints the hub recorded in its data
    dir (picofleet/core/endpoints.py), then defaults."""
    from picofleet.core.endpoints import apply

    values = {k: v for k, v in overrides.items() if v is not None}
    if data_dir is not None:
        values["data_dir"] = data_dir
    settings = apply(Settings(**values), starting=starting)
    logs.configure(_log_level(settings), settings.log_format)
    return settings
