"""Writing files that hold secrets or that another process reads while we replace them."""

from __future__ import annotations

import os
from pathlib import Path


def replace_file(path: Path, data: str | bytes, mode: int = 0o600) -> None:
    """Atomically replace ``path`` with ``data``.

    The temp file is created with ``mode`` before a byte is written (whatever the umask of
    an existing file), synced, then renamed over ``path``: a reader or a crash sees the old
    file or the new one, never a part, and a secret is never readable by others.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
