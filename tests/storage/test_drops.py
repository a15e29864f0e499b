from __future__ import annotations

import datetime as dt
import hashlib
import time

import pytest

from lmindexer.catalog import CatalogFormat
from lmindexer.storage.drops import Drop, list_drops
from lmindexer.storage.s3 import StorageError, list_objects, open_binary, remove, s3_client, write_bytes


def _count_list_calls(client) -> list[int]:
    calls: list[int] = []
    client.meta.events.register("after-call.s3.ListObjectsV2", lambda **kwargs: calls.append(1))
    return calls


def test_list_objects_pages_through_a_prefix(s3_bucket):
    client = s3_client()
    for n in range(7):
        client.put_object(Bucket=s3_bucket, Key=f"incoming/part-{n}.jsonl", Body=f"{n}".encode())
    client.put_object(Bucket=s3_bucket, Key="elsewhere/x.jsonl", Body=b"x")
    calls = _count_list_calls(client)
    objects = list(list_objects(f"s3://{s3_bucket}/incoming/", client=client, page_size=2))
    assert len(calls) == 4  # 7 keys, 2 per page
    assert [o.key for o in objects] == [f"incoming/part-{n}.jsonl" for n in range(7)]
    assert objects[3].etag == hashlib.md5(b"3").hexdigest()  # unquoted
    assert objects[3].size == 1
    assert objects[3].uri == f"s3://{s3_bucket}/incoming/part-3.jsonl"
    with pytest.raises(StorageError, match="page size"):
        list(list_objects(f"s3://{s3_bucket}/incoming/", page_size=0))
    with pytest.raises(StorageError, match="NoSuchBucket"):
        list(list_objects("s3://no-such-bucket-here/incoming/", client=client))


def test_list_drops_keeps_catalogues_oldest_first(s3_bucket):
    client = s3_client()
    client.put_object(Bucket=s3_bucket, Key="incoming/z-first.jsonl", Body=b"{}")
    time.sleep(1.1)  # S3 timestamps have one-second resolution
    time.sleep(1.0 - time.time() % 1.0)  # start of a fresh second, so the next writes usually share it
    for key in (
        "incoming/b.csv.gz",
        "incoming/a.parquet",
        "incoming/2024/c.JSONL.GZ",
        "incoming/_SUCCESS",
        "incoming/d.jsonl.tmp",
        "incoming/folder/",
        "incoming-old/e.jsonl",
        "other/f.jsonl",
    ):
        client.put_object(Bucket=s3_bucket, Key=key, Body=b"x")
    stamps = {
        key: client.head_object(Bucket=s3_bucket, Key=key)["LastModified"]
        for key in ("incoming/b.csv.gz", "incoming/a.parquet", "incoming/2024/c.JSONL.GZ")
    }
    calls = _count_list_calls(client)
    drops = list_drops(f"s3://{s3_bucket}", client=client, page_size=3)
    # Oldest first, then same-second objects by key; a loaded machine may spread the writes over two seconds.
    later = sorted(stamps, key=lambda key: (stamps[key], key))
    assert [d.key for d in drops] == ["incoming/z-first.jsonl", *later]
    assert len(calls) == 3  # 8 objects under incoming/, 3 per page
    formats = {d.key: d.format for d in drops}
    assert formats == {
        "incoming/z-first.jsonl": CatalogFormat.JSONL,
        "incoming/2024/c.JSONL.GZ": CatalogFormat.JSONL_GZ,
        "incoming/a.parquet": CatalogFormat.PARQUET,
        "incoming/b.csv.gz": CatalogFormat.CSV_GZ,
    }
    assert drops[0].last_modified < drops[1].last_modified
    assert [d.key for d in list_drops(f"s3://{s3_bucket}", "other", client=client)] == ["other/f.jsonl"]


def test_list_drops_under_a_root_and_only_from_s3(s3_bucket):
    client = s3_client()
    client.put_object(Bucket=s3_bucket, Key="lake/incoming/a.jsonl", Body=b"{}")
    client.put_object(Bucket=s3_bucket, Key="incoming/b.jsonl", Body=b"{}")
    assert [d.key for d in list_drops(f"s3://{s3_bucket}/lake/", client=client)] == ["lake/incoming/a.jsonl"]
    assert list_drops(f"s3://{s3_bucket}", "nothing-here/", client=client) == []
    with pytest.raises(StorageError, match="s3://"):
        list_drops("/tmp/incoming")


def test_a_drop_survives_a_trip_through_json():
    drop = Drop(
        "bucket", "incoming/2024-05-01/new items.jsonl", "abc", 12, dt.datetime(2024, 5, 1, 3, 0, tzinfo=dt.UTC)
    )
    data = drop.to_dict()
    assert data["last_modified"] == "2024-05-01T03:00:00+00:00"
    assert Drop.from_dict(data) == drop
    assert drop.uri == "s3://bucket/incoming/2024-05-01/new items.jsonl"
    assert drop.slug == "incoming-2024-05-01-new-items.jsonl"


@pytest.mark.parametrize("where", ["local", "s3"])
def test_write_bytes_and_remove(where, tmp_path, request):
    client = None
    if where == "s3":
        bucket = request.getfixturevalue("s3_bucket")
        target = f"s3://{bucket}/a/b/c.json"
        client = s3_client()
    else:
        target = str(tmp_path / "a" / "b" / "c.json")
    write_bytes(b"one", target, client=client)
    write_bytes(b"two", target, client=client)
    with open_binary(target, client=client) as stream:
        assert stream.read() == b"two"
    remove(target, client=client)
    remove(target, client=client)  # already gone: fine
    with pytest.raises(StorageError), open_binary(target, client=client):
        pass
    if where == "local":
        assert list((tmp_path / "a" / "b").iterdir()) == []  # no temporary file left behind
