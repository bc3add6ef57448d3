"""A request id on every answer (``X-Request-ID``), in every error body and in the log lines a request causes,
so that a client's "it failed" and the operator's log line can be matched.

A caller's own ``X-Request-ID`` (a proxy's or a tracing system's) is kept when it is a plain token of at most
128 characters; anything else is replaced by a fresh random id rather than copied into logs and headers.
"""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = "X-Request-ID"
_RAW = HEADER.lower().encode()  # as ASGI carries header names
_VALID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_current: ContextVar[str | None] = ContextVar("fmpn_request_id", default=None)


def current_request_id() -> str | None:
    """The id of the request being answered (None outside a request)."""
    return _current.get()


class RequestIdMiddleware:
    """Sets the request's id for its task and adds it to the response's headers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers") or []).get(_RAW, b"").decode("latin-1")
        request_id = given if _VALID.fullmatch(given) else uuid.uuid4().hex
        _current.set(request_id)  # left set: the error handler outside this middleware (500s) reads it too

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or [])
                if not any(k.lower() == _RAW for k, _ in headers):
                    headers.append((_RAW, request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_id)
