# A counter that survives resets with few flash writes: the file holds the end of a reserved
# block and numbers are handed out from memory until the block is used up. A reset skips
# the rest of the block, never reuses a number. Writes go to a temp file renamed over the
# old one; reading takes the larger of both, so a cut during either step is harmless.
import os


def _read(path):
    try:
        with open(path) as f:
            return int(f.read())
    except (OSError, ValueError):
        return 0


class SeqStore:
    def __init__(self, path, block=100):
        self._path = path
        self._block = block
        self._next = max(_read(path), _read(path + ".tmp"))
        self._limit = self._next  # nothing reserved by this boot yet

    def peek(self):
        return self._next

    def next(self):
        if self._next >= self._limit:
            limit = self._next + self._block
            tmp = self._path + ".tmp"
            with open(tmp, "w") as f:
                f.write(str(limit))
            os.rename(tmp, self._path)
            self._limit = limit
        n = self._next
        self._next = n + 1
        return n
