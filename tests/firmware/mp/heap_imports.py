# Live heap of the firmware's modules once imported: gc.collect(), then gc.mem_alloc() at the
# interpreter's top level (#:collect; see tests/firmware/run_mpy.mjs). The hardware
# stand-ins are imported first, into the baseline. First what the app imports at start,
# then the modules it loads on demand (the clock from HTTP, an OTA verify).
import gc
import socket  # noqa: F401

import machine  # noqa: F401
import network  # noqa: F401

gc.collect()
#:collect
base = gc.mem_alloc()
import app  # noqa: E402, F401
import hw  # noqa: E402, F401

gc.collect()
#:collect
print("HEAP app", gc.mem_alloc() - base)
import ed25519  # noqa: E402, F401
import httpc  # noqa: E402, F401
import sha512  # noqa: E402, F401

gc.collect()
#:collect
print("HEAP all", gc.mem_alloc() - base)
