"""S3 answering 503 Slow Down (throttling, a partition under load): retried with back-off, and when it lasts, one
clear error and nothing half-written. The 503s are real HTTP answers injected in front of the local S3 server, so
botocore's own retry logic is what is exercised."""

from __future__ import annotations

import pytest
from botocore.awsrequest import AWSResponse

from lmindexer.idtable import Candidate, IdSpace, store_allocation
from lmindexer.storage.s3 import StorageError, s3_client, upload_file, write_bytes
from lmindexer.storage.versioned import read_versioned

SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


class _Raw:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: object):
        yield self._body


def throttle(client, operation: str, times: int) -> list[int]:
    """Answer the next ``times`` ``operation`` requests of ``client`` with 503 SlowDown; returns a list that counts
    every attempt of that operation."""
    attempts: list[int] = []

    def answer(request, **_: object):
        attempts.append(1)
        if len(attempts) <= times:
            return AWSResponse(request.url, 503, {"Content-Type": "application/xml"}, _Raw(SLOW_DOWN))
        return None  # let the request through to the server

    client.meta.events.register(f"before-send.s3.{operation}", answer)
    return attempts


def test_a_throttled_write_is_retried_and_lands(s3_bucket):
    client = s3_client()
    attempts = throttle(client, "PutObject", times=2)
    write_bytes(b"payload", f"s3://{s3_bucket}/state/x.json", client=client)
    assert len(attempts) == 3  # two 503s, then the write
    assert read_versioned(f"s3://{s3_bucket}/state/x.json").data == b"payload"


def test_throttling_that_outlasts_the_retries_is_one_storage_error(s3_bucket, tmp_path):
    client = s3_client(max_attempts=3)
    attempts = throttle(client, "PutObject", times=100)
    with pytest.raises(StorageError, match=r"cannot write s3://.*/state/x.json: SlowDown: Please reduce"):
        write_bytes(b"payload", f"s3://{s3_bucket}/state/x.json", client=client)
    assert len(attempts) == 1 + 3  # botocore's max_attempts counts the retries after the first try
    assert read_versioned(f"s3://{s3_bucket}/state/x.json").data is None  # nothing half-written

    # the transfer manager (used for uploads of files) wraps the same failure in its own exception type
    path = tmp_path / "snapshot.json"
    path.write_text("{}")
    with pytest.raises(StorageError, match=r"cannot write s3://.*/models/v1/snapshot.json"):
        upload_file(path, f"s3://{s3_bucket}/models/v1/snapshot.json", client=client)


def test_a_throttled_id_table_write_keeps_the_stored_table(s3_bucket, monkeypatch):
    space = IdSpace("rq-kmeans-20260101T000000Z-abcd1234", "rq-kmeans", (4, 4))
    uri = f"s3://{s3_bucket}/ids/v1/ids.parquet"
    first = store_allocation(uri, space, [Candidate("a", (1, 1), "h")])
    client = s3_client(max_attempts=2)
    throttle(client, "PutObject", times=100)
    with monkeypatch.context() as patch:
        patch.setattr("lmindexer.storage.versioned.shared_s3_client", lambda: client)
        with pytest.raises(StorageError, match="SlowDown"):
            store_allocation(uri, space, [Candidate("b", (1, 1), "h")])
    assert read_versioned(uri).version == first.version  # the earlier table, untouched
