from __future__ import annotations

import datetime as dt
import json

import pytest

from lmindexer.storage.drops import list_drops
from lmindexer.storage.s3 import StorageError, s3_client
from lmindexer.storage.state import ProcessingState, StateConflict

NOW = dt.datetime(2024, 5, 1, 2, 0, tzinfo=dt.UTC)


@pytest.fixture
def s3(s3_bucket):
    """One client per test: building a boto3 client costs a noticeable fraction of a second."""
    return s3_client()


def _put_drops(s3, bucket: str, *names: str, body: bytes = b'{"item_id": "a", "title": "A"}\n') -> None:
    for name in names:
        s3.put_object(Bucket=bucket, Key=f"incoming/{name}", Body=body)


def _state_document(s3, bucket: str, key: str = "state/processed.json") -> dict:
    return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def _once_before(client, operation: str, action) -> None:
    """Run ``action`` once, right before ``client`` sends ``operation``: a concurrent writer, deterministically."""
    fired: list[bool] = []

    def hook(**kwargs):
        if not fired:
            fired.append(True)
            action()

    client.meta.events.register(f"before-call.s3.{operation}", hook)


def test_unprocessed_and_mark_processed(s3, s3_bucket):
    _put_drops(s3, s3_bucket, "a.jsonl", "b.jsonl", "c.csv")
    base = f"s3://{s3_bucket}"
    drops = list_drops(base, client=s3)
    state = ProcessingState(base, client=s3)
    assert state.etag is None
    assert state.unprocessed(drops) == drops  # no state object yet: everything is new

    summary = {"rows_in": 1, "staged": 1, "quarantined": 0}
    assert state.mark_processed(drops[:2], "run-1", summary=summary, now=NOW) == drops[:2]
    assert state.unprocessed(drops) == [drops[2]]
    assert state.is_processed(drops[0]) and not state.is_processed(drops[2])

    document = _state_document(s3, s3_bucket)
    assert document["version"] == 1
    first = document["processed"][0]
    assert first["key"] == "incoming/a.jsonl"
    assert first["etag"] == drops[0].etag
    assert first["run_id"] == "run-1"
    assert first["processed_at"] == "2024-05-01T02:00:00+00:00"
    assert first["summary"] == summary
    assert first["size"] == drops[0].size

    # A fresh instance (the next night's run) sees the same state.
    assert ProcessingState(base, client=s3).unprocessed(list_drops(base, client=s3)) == [drops[2]]


def test_rerunning_a_run_is_a_no_op(s3, s3_bucket):
    _put_drops(s3, s3_bucket, "a.jsonl")
    base = f"s3://{s3_bucket}"
    drop = list_drops(base, client=s3)[0]
    state = ProcessingState(base, client=s3)
    assert state.mark_processed(drop, "run-1", summary={"staged": 1}) == [drop]
    etag = s3.head_object(Bucket=s3_bucket, Key="state/processed.json")["ETag"]

    again = ProcessingState(base, client=s3)
    assert again.mark_processed(drop, "run-1-retry", summary={"staged": 99}) == []
    assert again.mark_processed([drop, drop], "run-2") == []
    assert s3.head_object(Bucket=s3_bucket, Key="state/processed.json")["ETag"] == etag  # not rewritten
    (record,) = again.records
    assert (record.run_id, record.summary) == ("run-1", {"staged": 1})  # the first record is kept


def test_a_reuploaded_drop_counts_as_new(s3, s3_bucket):
    _put_drops(s3, s3_bucket, "a.jsonl")
    base = f"s3://{s3_bucket}"
    state = ProcessingState(base, client=s3)
    state.mark_processed(list_drops(base, client=s3), "run-1")
    assert state.unprocessed(list_drops(base, client=s3)) == []

    _put_drops(s3, s3_bucket, "a.jsonl", body=b'{"item_id": "a", "title": "A, corrected"}\n')
    (changed,) = list_drops(base, client=s3)
    assert state.unprocessed([changed]) == [changed]
    assert state.mark_processed(changed, "run-2") == [changed]
    by_run = {r.run_id: (r.key, r.etag) for r in ProcessingState(base, client=s3).records}
    assert by_run["run-2"] == ("incoming/a.jsonl", changed.etag)
    assert by_run["run-1"][0] == "incoming/a.jsonl" and by_run["run-1"][1] != changed.etag


@pytest.mark.parametrize("conditional_writes", [True, False])
def test_a_concurrent_update_is_detected_and_never_lost(s3, s3_bucket, conditional_writes):
    _put_drops(s3, s3_bucket, "a.jsonl", "b.jsonl")
    base = f"s3://{s3_bucket}"
    a, b = list_drops(base, client=s3)
    ProcessingState(base, client=s3).mark_processed(a, "run-0")  # the state object exists, so If-Match is used

    def other_run_marks_b() -> None:
        ProcessingState(base, client=s3).mark_processed(b, "run-other")

    # With conditional writes the PUT itself is refused; without, the ETag check just before it notices.
    operation = "PutObject" if conditional_writes else "HeadObject"
    client = s3_client()
    _once_before(client, operation, other_run_marks_b)
    state = ProcessingState(base, client=client, conditional_writes=conditional_writes)
    with pytest.raises(StateConflict, match="changed since it was read"):
        state.mark_processed(b, "run-1", retries=0)
    records = {r.key: r.run_id for r in ProcessingState(base, client=s3).records}
    assert records == {"incoming/a.jsonl": "run-0", "incoming/b.jsonl": "run-other"}  # the other run's write kept

    # With retries the loser re-reads and merges: both runs' records survive.
    _put_drops(s3, s3_bucket, "c.jsonl")
    c = next(d for d in list_drops(base, client=s3) if d.key.endswith("c.jsonl"))
    client = s3_client()
    _once_before(client, operation, lambda: ProcessingState(base, client=s3).mark_processed(c, "run-other"))
    state = ProcessingState(base, client=client, conditional_writes=conditional_writes)
    _put_drops(s3, s3_bucket, "d.jsonl")
    d = next(x for x in list_drops(base, client=s3) if x.key.endswith("d.jsonl"))
    assert state.mark_processed([c, d], "run-2", retries=2) == [d]  # c was recorded by the other run meanwhile
    records = {r.key: r.run_id for r in ProcessingState(base, client=s3).records}
    assert records["incoming/c.jsonl"] == "run-other"
    assert records["incoming/d.jsonl"] == "run-2"


def test_two_runs_creating_the_state_at_once(s3, s3_bucket):
    _put_drops(s3, s3_bucket, "a.jsonl", "b.jsonl")
    base = f"s3://{s3_bucket}"
    a, b = list_drops(base, client=s3)
    client = s3_client()
    _once_before(client, "PutObject", lambda: ProcessingState(base, client=s3).mark_processed(b, "run-other"))
    state = ProcessingState(base, client=client)
    with pytest.raises(StateConflict):
        state.mark_processed(a, "run-1", retries=0)  # If-None-Match: the other run created it first
    assert state.mark_processed(a, "run-1") == [a]
    assert {r.key for r in ProcessingState(base, client=s3).records} == {"incoming/a.jsonl", "incoming/b.jsonl"}


def test_configurable_location_and_bad_state(s3, s3_bucket):
    _put_drops(s3, s3_bucket, "a.jsonl")
    base = f"s3://{s3_bucket}"
    drops = list_drops(base, client=s3)
    state = ProcessingState(f"{base}/lake", prefix="pipeline-state/", name="nightly.json", client=s3)
    assert state.uri == f"s3://{s3_bucket}/lake/pipeline-state/nightly.json"
    state.mark_processed(drops, "run-1")
    assert _state_document(s3, s3_bucket, "lake/pipeline-state/nightly.json")["processed"][0]["run_id"] == "run-1"

    s3.put_object(Bucket=s3_bucket, Key="state/processed.json", Body=b"{not json")
    with pytest.raises(StorageError, match="not a readable processing state"):
        ProcessingState(base, client=s3).unprocessed(drops)
    s3.put_object(Bucket=s3_bucket, Key="state/processed.json", Body=b'{"version": 99}')
    with pytest.raises(StorageError, match="version 1"):
        ProcessingState(base, client=s3).load()
    with pytest.raises(StorageError, match="s3://"):
        ProcessingState("/tmp/state")


def test_a_damaged_state_is_detected_not_trusted(s3, s3_bucket):
    _put_drops(s3, s3_bucket, "a.jsonl", "b.jsonl")
    base = f"s3://{s3_bucket}"
    drops = list_drops(base, client=s3)
    ProcessingState(base, client=s3).mark_processed(drops, "run-1")
    document = _state_document(s3, s3_bucket)
    # one record silently edited (e.g. a flipped byte in an ETag): the drop would be reprocessed
    document["processed"][1]["etag"] = "0" * 32
    s3.put_object(Bucket=s3_bucket, Key="state/processed.json", Body=json.dumps(document).encode())
    with pytest.raises(StorageError, match="do not match its checksum"):
        ProcessingState(base, client=s3).unprocessed(drops)


def test_rejected_drops_are_recorded_with_their_reason_and_skipped(s3, s3_bucket):
    _put_drops(s3, s3_bucket, "a.jsonl", "b.jsonl")
    base = f"s3://{s3_bucket}"
    a, b = list_drops(base, client=s3)
    state = ProcessingState(base, client=s3)
    state.mark_processed(a, "run-1", summary={"staged": 1})
    state.mark_processed(b, "run-1", status="rejected", reason="not a readable Parquet file")
    records = {r.key: r for r in ProcessingState(base, client=s3).records}
    assert (records["incoming/a.jsonl"].status, records["incoming/a.jsonl"].reason) == ("processed", None)
    assert (records["incoming/b.jsonl"].status, records["incoming/b.jsonl"].reason) == (
        "rejected", "not a readable Parquet file")  # fmt: skip
    assert ProcessingState(base, client=s3).unprocessed([a, b]) == []
    with pytest.raises(ValueError, match="not 'maybe'"):
        state.mark_processed(a, "run-2", status="maybe")
