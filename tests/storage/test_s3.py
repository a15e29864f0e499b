from __future__ import annotations

import gzip
import itertools
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from testsupport.s3_requests import recorded_gets

from lmindexer.catalog import read_items
from lmindexer.storage import s3
from lmindexer.storage.parquet import prefetch_columns
from lmindexer.storage.s3 import (
    S3Location,
    StorageError,
    coalesce_ranges,
    download_prefix,
    exists,
    local_copy,
    open_binary,
    open_random_access,
    s3_client,
    upload_file,
)


def test_location_parsing():
    assert S3Location.parse("s3://bucket/a/b.jsonl") == S3Location("bucket", "a/b.jsonl")
    assert str(S3Location("b", "k")) == "s3://b/k"
    for bad in ("http://x/y", "s3:///key"):
        with pytest.raises(StorageError):
            S3Location.parse(bad)


def test_client_uses_the_standard_chain_and_retries(s3_env):
    client = s3_client()
    assert client.meta.endpoint_url == s3_env
    assert client.meta.config.retries["mode"] == "standard"
    assert client.meta.config.retries["total_max_attempts"] == 6  # first try + 5 retries


def test_streaming_reads_and_catalogues_from_s3(s3_bucket, tmp_path):
    client = s3_client()
    rows = [{"item_id": f"i{n}", "title": f"title {n}"} for n in range(2500)]
    body = "".join(json.dumps(r) + "\n" for r in rows).encode()
    client.put_object(Bucket=s3_bucket, Key="incoming/drop.jsonl.gz", Body=gzip.compress(body))
    with open_binary(f"s3://{s3_bucket}/incoming/drop.jsonl.gz") as stream:
        assert gzip.GzipFile(fileobj=stream).read() == body
    items, summary = read_items(f"s3://{s3_bucket}/incoming/drop.jsonl.gz", batch_size=100)
    assert len(items) == 2500
    assert summary.reconciles


def test_parquet_from_s3_goes_through_a_temporary_file(s3_bucket, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    local = tmp_path / "cat.parquet"
    pq.write_table(pa.table({"item_id": ["a", "b"], "text": ["x", "y"]}), local)
    upload_file(local, f"s3://{s3_bucket}/incoming/cat.parquet")
    assert exists(f"s3://{s3_bucket}/incoming/cat.parquet")
    with local_copy(f"s3://{s3_bucket}/incoming/cat.parquet") as path:
        copied = path
        assert path.read_bytes() == local.read_bytes()
    assert not copied.exists()
    items, _ = read_items(f"s3://{s3_bucket}/incoming/cat.parquet")
    assert [i.item_id for i in items] == ["a", "b"]


def test_a_parquet_column_is_read_from_s3_by_ranges_not_the_whole_object(s3_bucket, tmp_path):
    """open_random_access fetches only the byte ranges read: one small column of a large Parquet object costs a
    fraction of the object, gives the same values as the file, and a replaced object is never read as a mix."""
    import os

    import pyarrow as pa
    import pyarrow.parquet as pq

    local = tmp_path / "wide.parquet"
    texts = [os.urandom(400).hex() for _ in range(3000)]  # incompressible: the text column is most of the file
    pq.write_table(pa.table({"item_id": [f"i{n}" for n in range(3000)], "text": texts}), local)
    uri = f"s3://{s3_bucket}/catalog/wide.parquet"
    upload_file(local, uri)
    client = s3_client()
    fetched = recorded_gets(client)
    with open_random_access(uri, client=client) as handle:
        column = pq.ParquetFile(handle).read(columns=["item_id"]).column("item_id")
    assert column.to_pylist() == [f"i{n}" for n in range(3000)]
    assert 0 < sum(fetched) < local.stat().st_size / 10
    with open_random_access(uri, client=client) as handle:
        assert handle.read() == local.read_bytes()
        handle.seek(-8, 2)
        assert handle.read() == local.read_bytes()[-8:]
        client.put_object(Bucket=s3_bucket, Key="catalog/wide.parquet", Body=b"replaced")
        handle.seek(0)
        with pytest.raises(StorageError, match="PreconditionFailed"):
            handle.read(100)


@given(
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 300)), max_size=30),
    st.integers(0, 2_000),
    st.integers(1, 5_000),
)
def test_coalesced_ranges_cover_every_byte_asked_for_and_merge_only_what_pays(spans, gap, largest):
    """Every byte of every range stays covered; two requests stay apart only where the gap between them is more
    than ``gap`` or joining them would make a request longer than ``largest``; a request is longer than
    ``largest`` only when it is one range asked for."""
    ranges = [(start, start + length) for start, length in spans]
    merged = coalesce_ranges(ranges, gap=gap, largest=largest)
    for start, end in ranges:
        if end > start:
            assert any(s <= start and end <= e for s, e in merged)
    assert merged == sorted(merged)
    for (s1, e1), (s2, e2) in itertools.pairwise(merged):
        assert s2 - e1 > gap or max(e1, e2) - s1 > largest
    for s, e in merged:
        assert e - s <= largest or (s, e) in ranges
        assert any(s == start for start, end in ranges if end > start)  # a request starts where a range does


def test_ranges_exactly_the_gap_limit_apart_are_one_request():
    assert coalesce_ranges([(15, 20), (0, 10)], gap=5, largest=100) == [(0, 20)]
    assert coalesce_ranges([(0, 10), (15, 20)], gap=4, largest=100) == [(0, 10), (15, 20)]
    assert coalesce_ranges([(0, 10), (15, 20)], gap=5, largest=19) == [(0, 10), (15, 20)]
    assert coalesce_ranges([(0, 50), (5, 8), (50, 50)], gap=0, largest=10) == [(0, 50)]


def test_a_column_of_many_row_groups_is_fetched_in_one_request_when_its_gaps_cost_less(s3_bucket, tmp_path):
    """prefetch_columns has the ranged reader fetch a column's chunks in all row groups together (their gaps are
    cheaper to read than a request), so reading the column costs the footer's request and one more, not one per
    row group; where the gaps cost more (a zero gap limit), each chunk is its own request. The values are the
    file's either way."""
    import os

    import pyarrow as pa
    import pyarrow.parquet as pq

    local = tmp_path / "groups.parquet"
    ids = [f"i{n:05d}" for n in range(4000)]
    pq.write_table(pa.table({"item_id": ids, "text": [os.urandom(50).hex() for _ in ids]}), local, row_group_size=200)
    uri = f"s3://{s3_bucket}/catalog/groups.parquet"
    upload_file(local, uri)
    client = s3_client()
    fetched = recorded_gets(client)

    def read_ids() -> list[str]:
        fetched.clear()
        with open_random_access(uri, client=client) as handle:
            parquet = pq.ParquetFile(handle)
            prefetch_columns(handle, parquet, ["item_id"])
            return parquet.read(columns=["item_id"]).column("item_id").to_pylist()

    assert read_ids() == ids
    assert len(fetched) == 2  # the footer, then the 20 chunks of item_id and the text chunks between them
    original = s3.COALESCE_GAP_BYTES
    try:
        s3.COALESCE_GAP_BYTES = 0
        assert read_ids() == ids
    finally:
        s3.COALESCE_GAP_BYTES = original
    assert len(fetched) == 1 + 20
    # a local file has no ranged reader: nothing is fetched ahead, the read is the same
    with open(local, "rb") as handle:
        parquet = pq.ParquetFile(handle)
        prefetch_columns(handle, parquet, ["item_id"])
        assert parquet.read(columns=["item_id"]).column("item_id").to_pylist() == ids


def test_missing_objects_and_buckets_fail_with_a_reason(s3_bucket):
    assert not exists(f"s3://{s3_bucket}/nope")
    with pytest.raises(StorageError, match="NoSuchKey"), open_binary(f"s3://{s3_bucket}/nope.jsonl"):
        pass
    with pytest.raises(StorageError, match="NoSuchBucket"), open_binary("s3://no-such-bucket-here/x.jsonl"):
        pass
    with pytest.raises(StorageError, match="no objects"):
        download_prefix(f"s3://{s3_bucket}/empty/", __import__("pathlib").Path("/tmp"))


def test_download_prefix_copies_a_tree(s3_bucket, tmp_path):
    client = s3_client()
    client.put_object(Bucket=s3_bucket, Key="models/v1/snapshot.json", Body=b"{}")
    client.put_object(Bucket=s3_bucket, Key="models/v1/sub/weights.safetensors", Body=b"w")
    client.put_object(Bucket=s3_bucket, Key="models/v10/other.json", Body=b"no")
    count = download_prefix(f"s3://{s3_bucket}/models/v1", tmp_path)
    assert count == 2
    assert (tmp_path / "snapshot.json").read_bytes() == b"{}"
    assert (tmp_path / "sub" / "weights.safetensors").read_bytes() == b"w"


def test_local_upload_is_atomic_copy(tmp_path):
    source = tmp_path / "a.bin"
    source.write_bytes(b"data")
    upload_file(source, str(tmp_path / "out" / "b.bin"))
    assert (tmp_path / "out" / "b.bin").read_bytes() == b"data"
    assert list((tmp_path / "out").iterdir()) == [tmp_path / "out" / "b.bin"]


def test_default_client_options_come_from_configuration(s3_server, monkeypatch):
    from lmindexer.storage.s3 import configure_default_client

    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    configure_default_client(
        endpoint_url=s3_server, region_name="eu-west-1", aws_access_key_id="a", aws_secret_access_key="b"
    )
    try:
        client = s3_client()
        assert client.meta.endpoint_url == s3_server
        assert client.meta.region_name == "eu-west-1"
        assert s3_client(region_name="us-west-2").meta.region_name == "us-west-2"  # explicit arguments win
    finally:
        configure_default_client()
    assert s3_client().meta.endpoint_url != s3_server
