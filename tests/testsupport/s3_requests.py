"""What a test's S3 client fetches, request by request."""

from __future__ import annotations

from typing import Any


def recorded_gets(client: Any) -> list[int]:
    """A list that receives the byte count of every GetObject ``client`` makes from now on."""
    fetched: list[int] = []

    def record(parsed: dict[str, Any], **_: Any) -> None:
        fetched.append(int(parsed.get("ContentLength", 0)))

    client.meta.events.register("after-call.s3.GetObject", record)
    return fetched
