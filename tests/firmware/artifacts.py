"""A real HTTP server for OTA artifacts in a thread, with the faults the device must survive.

It answers like the hub (``GET /ota/artifacts/{sha256}``, ``Range: bytes=N-`` -> 206) and can
cut a response after some bytes, serve other bytes than announced, or serve too few.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Artifacts:
    files: dict[str, bytes] = field(default_factory=dict)  # sha256 -> bytes served
    cut_after: dict[str, int] = field(default_factory=dict)  # sha256 -> bytes, once
    ranges: list[str | None] = field(default_factory=list)  # Range header of each request
    port: int = 0

    def add(self, data: bytes, *, serve: bytes | None = None) -> str:
        """Announce data's sha256; serve ``serve`` instead when given (a tampered artifact)."""
        sha = hashlib.sha256(data).hexdigest()
        self.files[sha] = data if serve is None else serve
        return sha

    def url(self, sha: str) -> str:
        return f"http://127.0.0.1:{self.port}/ota/artifacts/{sha}"


def _handler(store: Artifacts) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            sha = self.path.rsplit("/", 1)[-1]
            rng = self.headers.get("Range")
            store.ranges.append(rng)
            data = store.files.get(sha)
            if data is None:
                self.send_error(404)
                return
            start = 0
            if rng:
                start = int(rng.removeprefix("bytes=").split("-")[0])
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.end_headers()
                    return
            body = data[start:]
            self.send_response(206 if rng else 200)
            if rng:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            cut = store.cut_after.pop(sha, None)
            self.wfile.write(body if cut is None else body[:cut])

    return Handler


@contextmanager
def serve() -> Iterator[Artifacts]:
    store = Artifacts()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(store))
    store.port = server.server_address[1]
    t = threading.Thread(target=server.serve_forever, name="artifacts", daemon=True)
    t.start()
    try:
        yield store
    finally:
        server.shutdown()
        server.server_close()
        t.join(5)
