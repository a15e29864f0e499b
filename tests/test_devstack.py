from __future__ import annotations

import json
import os
import urllib.request

import boto3

from lmindexer import devstack


def test_stack_starts_answers_and_stops_by_pid(tmp_path):
    stack = devstack.start(tmp_path)
    try:
        assert devstack.start(tmp_path) == stack  # a second start reports the running stack
        with urllib.request.urlopen(stack.search_url, timeout=5) as response:
            assert json.loads(response.read())["tagline"].startswith("The OpenSearch Project")
        env = devstack.client_env(stack)
        client = boto3.client(
            "s3",
            endpoint_url=env["AWS_ENDPOINT_URL_S3"],
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            region_name=env["AWS_DEFAULT_REGION"],
        )
        client.create_bucket(Bucket="stack-test")
        assert [b["Name"] for b in client.list_buckets()["Buckets"]] == ["stack-test"]
        connection = json.loads(env["AIRFLOW_CONN_LMINDEXER_SEARCH"])
        assert connection["port"] == int(stack.search_url.rsplit(":", 1)[1])
    finally:
        assert devstack.stop(tmp_path)
    for pid in (stack.s3_pid, stack.search_pid):
        assert not devstack._alive(pid)
    assert devstack.status(tmp_path) is None
    assert not devstack.stop(tmp_path)
    assert os.listdir(tmp_path)  # logs stay for inspection
