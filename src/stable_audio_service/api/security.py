"""Request guards that run before any route: body size cap and optional bearer-token auth.

Plain ASGI middleware, so an oversized body is refused while it streams in, and a
missing token never reaches a route (or the model).
"""

from __future__ import annotations

import hmac
import json
from typing import Any

# Paths anyone may read: the health probe, the playground page (it has a token field) and the API's
# description (/docs must load to offer its "Authorize" button; the schema holds no secrets).
PUBLIC_PATHS = ("/health", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc")
PUBLIC_PREFIXES = ("/static/",)
PUBLIC_EXACT_PAGES = ("/", "/favicon.ico")


async def _send_json(send: Any, status: int, body: dict, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
            + (headers or []),
        }
    )
    await send({"type": "http.response.body", "body": payload})


class GuardMiddleware:
    def __init__(self, app: Any, max_body_bytes: int, api_key: str | None) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.api_key = api_key.encode() if api_key else None

    def _public(self, path: str) -> bool:
        return path in PUBLIC_PATHS or path in PUBLIC_EXACT_PAGES or path.startswith(PUBLIC_PREFIXES)

    def _authorised(self, scope: dict) -> bool:
        if self.api_key is None or self._public(scope.get("path", "")):
            return True
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.api_key)
        return False

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if not self._authorised(scope):
            await _send_json(send, 401, {"detail": "missing or wrong bearer token"}, [(b"www-authenticate", b"Bearer")])
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _send_json(send, 400, {"detail": "invalid Content-Length header"})
                    return
                if declared > self.max_body_bytes:
                    await _send_json(send, 413, {"detail": f"request body larger than {self.max_body_bytes} bytes"})
                    return
        received = 0
        refused = False

        async def limited_receive() -> dict:
            # Past the cap: answer 413 ourselves and tell the app the client left, so it stops reading.
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request" and not refused:
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    refused = True
                    await _send_json(send, 413, {"detail": f"request body larger than {self.max_body_bytes} bytes"})
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: dict) -> None:
            if not refused:
                await send(message)

        await self.app(scope, limited_receive, guarded_send)
