"""Issue 19, finding 11a: the hub never serves an artifact whose bytes no longer match the
sha256 it is named by; it answers 500 and logs, and serves it again once repaired."""

from __future__ import annotations

import hashlib

import httpx
from structlog.testing import capture_logs

from picofleet.core.artifacts import ArtifactStore
from tests.conftest import RunningHub

DATA = b"# main.py\n" + b"print('hello')\n" * 200


async def test_corrupted_artifact_is_refused(hub: RunningHub) -> None:
    store = ArtifactStore.for_settings(hub.settings)
    sha = store.put(DATA)
    path = store.path(sha)
    assert path is not None and hashlib.sha256(DATA).hexdigest() == sha
    url = f"/ota/artifacts/{sha}"
    async with httpx.AsyncClient(base_url=hub.http) as anon:
        assert (await anon.get(url)).content == DATA

        bad = bytearray(DATA)
        bad[100] ^= 0x01  # one flipped bit, same size
        path.write_bytes(bytes(bad))
        with capture_logs() as logs:
            full = await anon.get(url)
            part = await anon.get(url, headers={"Range": "bytes=0-99"})
            head = await anon.head(url)
        assert (full.status_code, part.status_code, head.status_code) == (500, 500, 500)
        assert bytes(bad) not in full.content and bytes(bad[:100]) not in part.content
        corrupt = [e for e in logs if e["event"] == "ota.artifact_corrupt"]
        assert len(corrupt) == 3 and corrupt[0]["sha256"] == sha
        assert corrupt[0]["actual"] == hashlib.sha256(bad).hexdigest()

        # Publishing the same release again repairs the file (same size, other bytes).
        assert store.put(DATA) == sha
        assert path.read_bytes() == DATA
        again = await anon.get(url, headers={"Range": "bytes=0-99"})
        assert again.status_code == 206 and again.content == DATA[:100]
