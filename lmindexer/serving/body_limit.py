"""A limit on the size of request bodies, enforced before a body is read into memory.

Without it, a body of any size is read in full (and parsed) before validation can refuse it: one body of a few
hundred megabytes doubles the server's memory. The limit is checked in the ASGI layer, below FastAPI:

- a ``Content-Length`` over the limit is refused at once, without reading a byte of the body (and, for a client that
  sent ``Expect: 100-continue``, before it even sends the body: the server asks for it only when it is read);
- a body of unknown length (chunked) is read here, its bytes counted as they arrive, and refused as soon as the count
  passes the limit, so at most the limit plus one chunk is ever held. A body within the limit is handed on whole.

The refusal is a 413 with the API's usual ``{"detail": ...}`` body and ``Connection: close``: the rest of the body is
never read, so the connection cannot carry another request.
"""

from __future__ import annotations

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send


def too_large_message(max_bytes: int) -> str:
    return f"the request body is larger than {max_bytes} bytes, the most this server accepts"


def _declared_length(scope: Scope) -> int | None:
    """The largest Content-Length the request declares; None when it declares none or none that is a number.

    A server refuses a malformed Content-Length before the application sees the request; should one get through,
    the body is counted as it arrives like any body of unknown length.
    """
    lengths = []
    for name, value in scope.get("headers", ()):
        if name.lower() == b"content-length" and value.strip().isdigit():
            lengths.append(int(value))
    return max(lengths) if lengths else None


class RequestBodyLimit:
    """ASGI middleware refusing request bodies larger than ``max_bytes`` with 413 (see the module docstring)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be at least 1, got {max_bytes}")
        self.app = app
        self.max_bytes = max_bytes

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = JSONResponse(
            {"detail": too_large_message(self.max_bytes)}, status_code=413, headers={"connection": "close"}
        )
        await response(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _declared_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client has gone: there is no one to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body: Message | None = {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        async def replay() -> Message:
            # The body once, whole; after it, the server's own messages (a disconnect, for streaming responses).
            nonlocal body
            if body is not None:
                message, body = body, None
                return message
            return await receive()

        await self.app(scope, replay, send)


__all__ = ["RequestBodyLimit", "too_large_message"]
