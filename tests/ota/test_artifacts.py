"""GET /ota/artifacts/{sha256}: Range requests, resume, and names that must never resolve."""

from __future__ import annotations

import hashlib

import httpx

from picofleet.core.signing import Signer
from tests.conftest import RunningHub
from tests.ota.conftest import app_source, release


async def test_range_requests_and_resume(
    hub: RunningHub, api: httpx.AsyncClient, signer: Signer
) -> None:
    data = app_source("1.1.0", body="    x = 1\n" * 400)
    rel = await release(api, "1.1.0", data)
    sha, size = rel["sha256"], len(data)
    url = f"/ota/artifacts/{sha}"
    async with httpx.AsyncClient(base_url=hub.http) as anon:  # devices carry no token
        full = await anon.get(url)
        assert full.status_code == 200 and full.content == data
        assert full.headers["accept-ranges"] == "bytes"
        assert full.headers["content-length"] == str(size)

        # A download broken after 1000 bytes resumes where it stopped.
        first = await anon.get(url, headers={"Range": "bytes=0-999"})
        assert first.status_code == 206
        assert first.headers["content-range"] == f"bytes 0-999/{size}"
        rest = await anon.get(url, headers={"Range": "bytes=1000-"})
        assert rest.status_code == 206
        assert rest.headers["content-range"] == f"bytes 1000-{size - 1}/{size}"
        assert hashlib.sha256(first.content + rest.content).hexdigest() == sha

        past_end = await anon.get(url, headers={"Range": f"bytes={size - 10}-{size + 500}"})
        assert past_end.status_code == 206 and past_end.content == data[-10:]
        suffix = await anon.get(url, headers={"Range": "bytes=-5"})
        assert suffix.status_code == 206 and suffix.content == data[-5:]

        for bad in (f"bytes={size}-", "bytes=10-5", "bytes=abc", "items=0-1", "bytes=-0"):
            r = await anon.get(url, headers={"Range": bad})
            assert r.status_code == 416, bad
            assert r.headers["content-range"] == f"bytes */{size}"

        head = await anon.head(url)
        assert head.status_code == 200 and head.headers["content-length"] == str(size)

        # Anything but 64 lowercase hex is unknown, before the file system is asked.
        outside = hub.settings.data_path / "secret.txt"
        outside.write_text("do not serve")
        for name in (
            sha.upper(),
            sha[:63],
            sha + "0",
            "0" * 64,
            "../secret.txt",
            "..%2Fsecret.txt",
            "..%2F..%2F..%2Fetc%2Fpasswd",
            f"..%2Fartifacts%2F{sha}",
            "%2e%2e",
        ):
            r = await anon.get(f"/ota/artifacts/{name}")
            assert r.status_code == 404, name
            assert b"do not serve" not in r.content


async def test_operator_endpoints_need_the_token(hub: RunningHub, signer: Signer) -> None:
    async with httpx.AsyncClient(base_url=hub.http) as anon:
        body = app_source("1.0.0")
        params = {"version": "1.0.0"}
        r = await anon.post("/api/ota/releases", params=params, content=body)
        assert r.status_code == 401
        r = await anon.post(
            "/api/ota/releases",
            params=params,
            content=body,
            headers={"Authorization": "Bearer wrong"},
        )
        assert r.status_code == 403
        for path in ("/api/ota/rollouts/1/pause", "/api/ota/rollback"):
            assert (await anon.post(path, json={})).status_code == 401
        assert (await anon.delete("/api/ota/pins/DEV1")).status_code == 401
        # Reads are open (dashboard), and nothing was created.
        assert (await anon.get("/api/ota/releases")).json() == []
