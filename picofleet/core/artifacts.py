"""The content-addressed artifact store: ``<data_dir>/artifacts/<sha256>``.

A name is accepted only when it is exactly 64 lowercase hex characters, checked before the
file system is touched, so no request can name a path outside the store. Bytes are hashed
again whenever they are read or a release is stored again: a file changed on disk (bit rot,
a bad copy, tampering) is never served as the release it is named after, and storing the
release again repairs it.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

from picofleet.core.settings import Settings

ARTIFACT_DIR = "artifacts"
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def valid_sha256(name: str) -> bool:
    return SHA256_RE.fullmatch(name) is not None


class CorruptArtifact(Exception):
    """The file's bytes no longer hash to its name."""

    def __init__(self, path: Path, actual: str) -> None:
        super().__init__(f"{path} hashes to {actual}")
        self.path, self.actual = path, actual


class ArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def for_settings(cls, settings: Settings) -> ArtifactStore:
        return cls(settings.data_path / ARTIFACT_DIR)

    def path(self, sha256: str) -> Path | None:
        """Where the artifact lives, or None for a malformed name."""
        if not valid_sha256(sha256):
            return None
        return self.root / sha256

    def load(self, sha256: str) -> bytes | None:
        """The artifact's bytes, checked against its name; None when there is no such
        artifact. Raises ``CorruptArtifact`` when the bytes on disk hash to anything else."""
        path = self.path(sha256)
        if path is None or not path.is_file():
            return None
        data = path.read_bytes()
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise CorruptArtifact(path, actual)
        return data

    def put(self, data: bytes) -> str:
        """Store ``data`` (atomically, once) and return its sha256; a file of that name
        whose bytes differ is replaced."""
        digest = hashlib.sha256(data).hexdigest()
        target = self.root / digest
        if target.is_file() and hashlib.sha256(target.read_bytes()).hexdigest() == digest:
            return digest
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".incoming-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return digest
