"""The request-body limit: a body over ``max_body_bytes`` is refused with 413 before it is read into memory.

These tests call the application at the ASGI level with a body source that counts what was pulled from it, so they
see exactly how much of a body was read, not only the status."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

import pytest

from lmindexer.errors import ConfigError
from lmindexer.serving import ServingLimits, create_app
from lmindexer.serving.body_limit import too_large_message

LIMIT = 4096


class Body:
    """An ASGI ``receive`` over body chunks, counting how many the application pulled."""

    def __init__(self, chunks: Sequence[bytes]) -> None:
        self.chunks = list(chunks)
        self.pulled = 0

    @property
    def bytes_pulled(self) -> int:
        return sum(len(chunk) for chunk in self.chunks[: self.pulled])

    async def __call__(self) -> dict:
        if self.pulled < len(self.chunks):
            self.pulled += 1
            return {
                "type": "http.request",
                "body": self.chunks[self.pulled - 1],
                "more_body": self.pulled < len(self.chunks),
            }
        return {"type": "http.disconnect"}


def call(app, method: str, path: str, body: Body, headers: Sequence[tuple[str, str]] = ()) -> tuple[int, dict, bytes]:
    """One request through the whole application (middleware included): status, headers, body."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), *((k.lower().encode(), v.encode()) for k, v in headers)],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(app(scope, body, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    content = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, content


def assert_too_large(status: int, headers: dict, content: bytes) -> None:
    assert status == 413, content
    assert json.loads(content) == {"detail": too_large_message(LIMIT)}
    assert headers["connection"] == "close"  # the rest of the body is never read: the connection cannot be reused


@pytest.fixture(scope="module")
def bare():
    return create_app(retriever=None, recommender=None, backend=None, limits={"max_body_bytes": LIMIT})


@pytest.mark.parametrize("declared", [LIMIT + 1, 193_000_000])
@pytest.mark.parametrize(("method", "path"), [("POST", "/recommend"), ("GET", "/health"), ("POST", "/nowhere")])
def test_a_declared_body_over_the_limit_is_refused_before_a_byte_is_read(bare, method, path, declared):
    body = Body([b"x" * 1000] * (LIMIT // 1000 + 2))
    assert_too_large(*call(bare, method, path, body, [("content-length", str(declared))]))
    assert body.pulled == 0


@pytest.mark.parametrize("headers", [[], [("transfer-encoding", "chunked")], [("content-length", "10")]])
def test_a_body_is_counted_as_it_arrives_and_refused_once_past_the_limit(bare, headers):
    """Without a Content-Length (or with one the body does not keep to) the bytes are counted as they come: reading
    stops at the chunk that passes the limit, however long the body would have gone on."""
    body = Body([b"x" * 1000] * 1000)
    assert_too_large(*call(bare, "POST", "/recommend", body, headers))
    assert body.pulled == LIMIT // 1000 + 1
    assert body.bytes_pulled <= LIMIT + 1000


def test_a_body_within_the_limit_reaches_the_endpoint_whole(recommender):
    app = create_app(retriever=None, recommender=recommender.model, backend=None, limits={"max_body_bytes": LIMIT})
    history = list(recommender.table.sid_map())[:5]
    document = json.dumps({"history": history, "k": 3}).encode()
    exact = document + b" " * (LIMIT - len(document))  # trailing spaces are still valid JSON
    pieces = [exact[i : i + 7] for i in range(0, len(exact), 7)]
    for headers, chunks in (
        ([("content-type", "application/json")], pieces),  # unknown length, many small chunks
        ([("content-type", "application/json"), ("content-length", str(LIMIT))], [exact]),
    ):
        status, _, content = call(app, "POST", "/recommend", Body(chunks), headers)
        assert status == 200, content
        assert len(json.loads(content)["results"]) == 3
    one_more = [("content-type", "application/json"), ("content-length", str(LIMIT + 1))]
    assert_too_large(*call(app, "POST", "/recommend", Body([exact + b" "]), one_more))


def test_the_body_limit_is_a_validated_documented_setting():
    assert ServingLimits().max_body_bytes == 256 * 1024
    with pytest.raises(ConfigError, match="max_body_bytes"):
        create_app(retriever=None, recommender=None, backend=None, limits={"max_body_bytes": 100})
    spec = create_app(retriever=None, recommender=None, backend=None, limits={"max_body_bytes": LIMIT}).openapi()
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            assert operation["responses"]["413"]["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/ErrorResponse"
            }, f"{method} {path}"
    assert f"at most {LIMIT} bytes" in spec["paths"]["/recommend"]["post"]["description"]
