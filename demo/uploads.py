"""How much clients may upload together: a bound per client and one for the server.

Gradio bounds each uploaded file (`max_file_size`), not their number: a client
can post file after file to /gradio_api/upload, each kept on disk until
Gradio's cache sweep deletes it (KEPT_S, looking every SWEEP_S). `UploadQuota` counts the
size of every upload request (its Content-Length, known before the body is
read; at least MIN_CHARGE bytes, which bounds the count of uploads too) per
client (its IP address) and for the whole server over the last WINDOW_S
seconds (as long as an upload can stay on disk), and refuses one that would pass either bound with HTTP 413 and a
message, before reading it. An upload that does not state its size is refused
with 411. Behind a proxy every client has the proxy's address, and shares one bound.
"""

from __future__ import annotations

import time
from collections import deque

from starlette.responses import PlainTextResponse

MB = 2**20
MIN_CHARGE = 64 * 2**10  # what the smallest upload counts for
CLIENT_UPLOAD_MB = 100  # per client, over the window (`--max-client-upload-mb`)
TOTAL_UPLOAD_MB = 1000  # all clients together (`--max-total-upload-mb`)
# Gradio deletes the files it keeps (uploads, served downloads) once older than
# KEPT_S, looking every SWEEP_S (`gr.Blocks(delete_cache=...)`).
SWEEP_S, KEPT_S = 60, 600
WINDOW_S = KEPT_S + SWEEP_S


class UploadQuota:
    """ASGI middleware over Gradio's app: uploads bounded per client and in total (see the module)."""

    def __init__(self, app, *, per_client_mb: float, total_mb: float, window_s: float = WINDOW_S, clock=time.monotonic):
        self.app = app
        self.per_client, self.total = int(per_client_mb * MB), int(total_mb * MB)
        self.window_s, self.clock = window_s, clock
        self._log: deque[tuple[float, str, int]] = deque()  # (when, client, bytes) of the window's uploads
        self._by_client: dict[str, int] = {}
        self._sum = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].rstrip("/").endswith("/upload"):
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        client = scope["client"][0] if scope.get("client") else "unknown"
        refusal = self.admit(client, int(length) if length and length.isdigit() else None)
        if refusal is not None:
            status, message = refusal
            return await PlainTextResponse(message, status_code=status)(scope, receive, send)
        return await self.app(scope, receive, send)

    def admit(self, client: str, size: int | None) -> tuple[int, str] | None:
        """Count an upload of `size` bytes from `client`; (HTTP status, message) if refused."""
        if size is None:
            return 411, "upload refused: state its size (a Content-Length header)"
        now = self.clock()
        while self._log and self._log[0][0] <= now - self.window_s:
            _, old, n = self._log.popleft()
            self._sum -= n
            self._by_client[old] -= n
            if not self._by_client[old]:
                del self._by_client[old]
        size = max(size, MIN_CHARGE)
        minutes = f"{self.window_s / 60:g} minutes"
        mine = self._by_client.get(client, 0)
        if mine + size > self.per_client:
            return 413, (
                f"upload refused: this client has uploaded {mine / MB:.1f} MB in the last {minutes}, and may "
                f"upload {self.per_client / MB:g} MB in that time (ddpm-jax demo --max-client-upload-mb): "
                "try again later"
            )
        if self._sum + size > self.total:
            return 413, (
                f"upload refused: the server has taken {self._sum / MB:.1f} MB of uploads in the last {minutes}, "
                f"and takes {self.total / MB:g} MB in that time (ddpm-jax demo --max-total-upload-mb): "
                "try again later"
            )
        self._log.append((now, client, size))
        self._by_client[client] = mine + size
        self._sum += size
        return None
