# A bounded ring of fixed-size slots in one preallocated bytearray: samples wait here until
# the broker has them. When it is full the oldest slot is overwritten and counted in
# `dropped`, so memory never grows while the device is offline.


class Ring:
    def __init__(self, slots, size):
        self.buf = bytearray(slots * size)
        self._size = size
        self._slots = slots
        self._first = 0
        self._count = 0
        self.dropped = 0

    def __len__(self):
        return self._count

    def push(self):
        # Offset of a fresh slot to fill (the newest).
        if self._count == self._slots:
            self._first = (self._first + 1) % self._slots
            self._count -= 1
            self.dropped += 1
        i = (self._first + self._count) % self._slots
        self._count += 1
        return i * self._size

    def peek(self):
        # Offset of the oldest slot, or -1 when empty.
        if not self._count:
            return -1
        return self._first * self._size

    def pop(self):
        if self._count:
            self._first = (self._first + 1) % self._slots
            self._count -= 1
