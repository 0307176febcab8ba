# gc for the board (harness): the built-in one, except that mem_free() answers as rp2's would,
# from a modelled GC heap of `heap` bytes (Board(heapsize=...)) less what the firmware has
# allocated (garbage included, as on rp2 until a collection). The wasm heap itself grows on
# demand and its mem_free() is ~128 MB. Installed as sys.modules["gc"] at boot.
from gc import *  # noqa: F403  (the built-in module)
from gc import mem_alloc

heap = 176 * 1024
baseline = 0  # what the interpreter and the harness hold (rp2 has them in flash)


def mem_free():
    return min(heap, max(0, heap - (mem_alloc() - baseline)))
