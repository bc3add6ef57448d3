"""A request whose client has gone stops its work instead of finishing it for no one.

A photo or a batch of them, or a video answered as one JSON document, would otherwise go on through the detector and
the model and be stored under an id nobody received, pushing real results out of the store (a streamed video stops
at its next line already: the server's write fails). :func:`until_disconnected` runs the work beside a watch on the
connection; when the client closes it, the work is cancelled: its jobs still waiting are dropped by the batcher
(``app/batching.py``), and the request ends as 499 ``client_disconnected``, an answer nobody reads, counted in the
metrics apart from server errors.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import Request

from app.errors import ApiError

T = TypeVar("T")

STATUS = 499  # nginx's "client closed request"


def client_gone() -> ApiError:
    return ApiError(STATUS, "client_disconnected", "the client closed the connection; the work for it was stopped")


async def until_disconnected(request: Request, work: Awaitable[T]) -> T:
    """``work``'s result, unless the client disconnects first (then ApiError 499, the work cancelled). Call it once
    the request's body has been read: the watch reads what the connection sends next."""
    task = asyncio.ensure_future(work)
    gone = False

    async def watch() -> None:
        nonlocal gone
        while (await request.receive())["type"] != "http.disconnect":
            pass
        gone = True
        task.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        return await task
    except asyncio.CancelledError:
        if gone:
            raise client_gone() from None
        raise
    finally:
        watcher.cancel()
