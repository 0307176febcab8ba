"""Board tests need Node and the npm MicroPython (``make node_modules/.installed``)."""

from __future__ import annotations

import pytest

from picofleet.sim.board import available
from tests.conftest import need


@pytest.fixture(autouse=True)
def _node_and_micropython() -> None:
    need(available(), "node + npm @micropython/micropython-webassembly-pyscript")
