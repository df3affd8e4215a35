"""What a visitor who has not logged in yet can see and do.

With logins, Gradio answers `/gradio_api/info` with 401 but still writes the whole API description into the login
page it serves at `/` (and at `/gradio_api/runs`, its run history). `LoginGuard` removes it from those pages for a
visitor without a valid login cookie; after the login the page reloads with it.

Gradio also lets anyone who knows a session's id act for that session without a login: `/gradio_api/cancel` ends
its running call (the page then waits for updates that never come) and `/gradio_api/heartbeat/<id>` followed by a
disconnect closes the session. With logins those answer 401 to a visitor without one.
"""

from __future__ import annotations

import json
import re
from http.cookies import SimpleCookie
from typing import Any

# The script line Gradio's page template writes; the JSON in it escapes "<", so it cannot end early.
_API_INFO = re.compile(rb"window\.gradio_api_info = .*?;</script>", re.DOTALL)
_EMPTY = b"window.gradio_api_info = " + json.dumps({"named_endpoints": {}, "unnamed_endpoints": {}}).encode() + b";</script>"
_PAGES = ("/", "/gradio_api/runs", "/gradio_api/runs/")
_SESSION_CALLS = ("/gradio_api/cancel", "/gradio_api/heartbeat/")


class LoginGuard:
    """ASGI middleware for Gradio's app: pages served to a visitor without a login carry no API description, and
    the calls that act for a session by its id alone need a login."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        guarded = path in _PAGES or path.startswith(_SESSION_CALLS)
        if scope["type"] != "http" or not guarded or _logged_in(scope.get("app"), scope):
            await self.app(scope, receive, send)
            return
        if path.startswith(_SESSION_CALLS):
            body = b'{"detail":"Not authenticated"}'
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": 401, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        start: dict[str, Any] = {}
        body = bytearray()

        async def hold(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
                return
            body.extend(message.get("body", b""))
            if message.get("more_body"):
                return
            page = _API_INFO.sub(lambda _: _EMPTY, bytes(body))
            headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
            await send({**start, "headers": [*headers, (b"content-length", str(len(page)).encode())]})
            await send({"type": "http.response.body", "body": page})

        await self.app(scope, receive, hold)


def _logged_in(gradio_app: Any, scope: dict[str, Any]) -> bool:
    """Whether the request carries a login Gradio knows (or the app has no logins)."""
    if gradio_app is None or getattr(gradio_app, "auth", None) is None:
        return True
    header = next((value for name, value in scope.get("headers", []) if name == b"cookie"), b"")
    cookies = SimpleCookie()
    cookies.load(header.decode("latin-1"))
    cookie_id = getattr(gradio_app, "cookie_id", "")
    tokens = getattr(gradio_app, "tokens", {})
    return any(
        name in cookies and cookies[name].value in tokens
        for name in (f"access-token-{cookie_id}", f"access-token-unsecure-{cookie_id}")
    )
