# MicroPython asyncio module, for use with webassembly port
# MIT license; Copyright (c) 2024 Damien P. George

from .core import *
from .funcs import wait_for, wait_for_ms, gather
from .event import Event
from .lock import Lock

__version__ = (3, 0, 0)


# picofleet board harness: asyncio.run, which this port lacks. The loop runs on the JS event
# loop (setTimeout), and the interpreter returns to it between iterations: the only place
# where this build's garbage collector can run. So run() schedules main and returns at once
# (rp2's blocks until main ends); when main ends, its error is printed as rp2's REPL would,
# and the host is told that the board sits at the REPL.
def run(main):
    return create_task(_board_main(main))


async def _board_main(main):
    import sys

    import _rt

    try:
        await main
        err = None
    except BaseException as e:  # rp2 prints it and drops to the REPL
        sys.print_exception(e)
        err = repr(e)
    _rt.call("repl", "main.py", err)
