from __future__ import annotations

import errno
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from testsupport.cli import run_cli

from lmindexer.cli import main
from lmindexer.errors import ConfigError


@pytest.mark.parametrize("command", [[], ["fit"], ["assign"], ["evaluate"], ["validate"], ["datasets", "fetch"]])
def test_help_on_every_command(capsys, command):
    code, out, _ = run_cli(capsys, *command, "--help")
    assert code == 0
    assert "Usage" in out


@pytest.mark.parametrize("command", [["validate"], ["fit"], ["assign"], ["serve"], ["retriever", "train"]])
def test_help_shows_flags_as_taking_no_value(capsys, command):
    code, out, _ = run_cli(capsys, *command, "--help")
    assert code == 0
    flags = [line for line in out.splitlines() if re.search(r"--(strict|quiet|search|help)\b", line)]
    assert any("--help" in line for line in flags)
    assert not any("<bool>" in line for line in flags), "\n".join(flags)


def test_recommender_train_help_states_the_sequence_presets_own_epochs_and_dropout(capsys):
    # The help is written out by hand (the CLI does not import the torch-heavy module at start-up), so it is held to
    # the preset here: a preset changed without its help fails.
    from lmindexer.downstream.generative import RECOMMENDER_PRESETS

    code, out, _ = run_cli(capsys, "recommender", "train", "--help")
    assert code == 0
    help_text = " ".join(out.replace("│", " ").split())
    preset = RECOMMENDER_PRESETS["sequence"]
    assert f"{preset['epochs']} epochs" in help_text
    assert f"dropout {preset['dropout']:g}:" in help_text


def test_fit_assign_evaluate_round_trip(capsys, wiki_sample_path, tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text("codebook_size: 8\nlevels: 2\n")
    code, out, err = run_cli(
        capsys,
        "fit",
        "--method",
        "rq-kmeans",
        "--catalog",
        str(wiki_sample_path),
        "--out",
        str(tmp_path / "snap"),
        "--config",
        str(config),
        "--quiet",
    )
    assert code == 0, err
    assert "fitted rq-kmeans on 320 items" in out
    code, out, err = run_cli(
        capsys,
        "assign",
        "--snapshot",
        str(tmp_path / "snap"),
        "--catalog",
        str(wiki_sample_path),
        "--ids",
        str(tmp_path / "ids.parquet"),
        "--json",
        str(tmp_path / "assign.json"),
        "--quiet",
    )
    assert code == 0, err
    assert "320 new IDs" in out
    assert json.loads((tmp_path / "assign.json").read_text())["rows_after"] == 320
    # the same into a table stored as parts (a manifest): the same IDs
    code, out, err = run_cli(capsys, "assign", "--snapshot", str(tmp_path / "snap"), "--catalog", str(wiki_sample_path),
                         "--ids", str(tmp_path / "ids.json"), "--quiet")  # fmt: skip
    assert code == 0, err
    from lmindexer.idtable import IdTable

    assert IdTable.read(tmp_path / "ids.json").sid_map() == IdTable.read(tmp_path / "ids.parquet").sid_map()
    code, out, err = run_cli(
        capsys,
        "evaluate",
        "--ids",
        str(tmp_path / "ids.parquet"),
        "--catalog",
        str(wiki_sample_path),
        "--label",
        "category",
        "--report",
        str(tmp_path / "report"),
        "--json",
        str(tmp_path / "q.json"),
    )
    assert code == 0, err
    assert "collision rate" in out
    assert (tmp_path / "report" / "label_heatmap.png").exists()
    assert json.loads((tmp_path / "q.json").read_text())["items"] == 320


def test_a_warm_retrain_reports_how_many_items_kept_their_first_code(capsys, wiki_sample_path, tmp_path):
    import yaml
    from testsupport.lm import TINY_LM

    first = tmp_path / "first.jsonl"
    first.write_text("".join(wiki_sample_path.read_text().splitlines(keepends=True)[:200]))
    config = tmp_path / "tiny-lm.yaml"
    config.write_text(yaml.safe_dump({**TINY_LM, "encoder_epochs": 0, "train_layers": 0}))
    fit = ["fit", "--config", str(config), "--quiet", "--out"]
    code, _, err = run_cli(capsys, *fit, str(tmp_path / "v1"), "--method", "lmindexer", "--catalog", str(first))
    assert code == 0, err
    code, out, err = run_cli(capsys, *fit, str(tmp_path / "v2"), "--warm-from", str(tmp_path / "v1"),
                             "--catalog", str(wiki_sample_path))  # fmt: skip
    assert code == 0, err
    warm = json.loads((tmp_path / "v2" / "snapshot.json").read_text())["manifest"]["warm_start"]
    previous = json.loads((tmp_path / "v1" / "snapshot.json").read_text())["version"]
    assert warm["previous_version"] == previous
    assert (
        f"warm start from {previous}: {warm['first_code_agreement']:.2%} of items kept the first code the previous "
        f"snapshot gave them, {warm['code_agreement']:.2%} all their learned codes" in out
    )


def test_validate_writes_rejects(capsys, tmp_path):
    catalogue = tmp_path / "c.jsonl"
    catalogue.write_text('{"item_id": "a", "text": "x"}\n{"item_id": "a", "text": "y"}\nnot json\n')
    code, _, err = run_cli(capsys, "validate", "--catalog", str(catalogue), "--rejects", str(tmp_path / "rej.jsonl"))
    assert code == 0
    assert "3 rows in, 1 accepted, 2 rejected" in err
    rejects = [json.loads(line) for line in (tmp_path / "rej.jsonl").read_text().splitlines()]
    assert [(r["row"], r["field"], r["rule"]) for r in rejects] == [
        (2, "item_id", "duplicate_item_id"),
        (3, "(row)", "malformed_json"),
    ]
    code, _, err = run_cli(capsys, "validate", "--catalog", str(catalogue), "--strict")
    assert code == 2
    assert (
        err.strip() == "error: invalid row (strict mode): c.jsonl:2: item_id: duplicate_item_id: "
        "item_id 'a' already appeared at row 1"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["fit", "--catalog", "missing.jsonl", "--out", "x"], "error: catalogue not found: missing.jsonl"),
        (["fit", "--catalog", "{catalogue}", "--out", "x", "--method", "nope"], "error: unknown indexer method 'nope'"),
        (["assign", "--snapshot", "nowhere", "--catalog", "{catalogue}", "--ids", "i.parquet"], "error: snapshot not"),
        (["evaluate", "--ids", "none.parquet"], "error: ID table not found"),
        (["datasets", "fetch", "nope"], "error: unknown data set 'nope'"),
    ],
)
def test_user_errors_are_one_line(capsys, tmp_path, wiki_sample_path, args, message):
    args = [a.replace("{catalogue}", str(wiki_sample_path)) for a in args]
    code, _, err = run_cli(capsys, *args)
    assert code == 2
    assert err.startswith(message)
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


def test_usage_errors_exit_2(capsys):
    code, _, err = run_cli(capsys, "fit", "--bogus")
    assert code == 2
    assert "No such option" in err


def test_methods_lists_options(capsys):
    code, out, _ = run_cli(capsys, "methods")
    assert code == 0
    assert "rqvae" in out and "commitment_weight" in out


# -- failures of the environment: one line and exit code 2; bugs keep their traceback --------------------------------


def _one_line_error(code: int, err: str, prefix: str) -> str:
    assert code == 2
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(prefix), lines[0]
    return lines[0]


def _no_aws_configuration(monkeypatch, tmp_path) -> None:
    for name in (
        "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE",
        "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    # No profile files and no instance metadata service: the credential chain has nowhere left to look.
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setattr("lmindexer.storage.s3._default_client_options", {})


def _no_credentials():
    from botocore.exceptions import NoCredentialsError

    return NoCredentialsError()


def test_missing_aws_credentials_are_one_line_with_a_hint(capsys, tmp_path, monkeypatch):
    _no_aws_configuration(monkeypatch, tmp_path)
    _raise_from_the_command(monkeypatch, _no_credentials)
    code, _, err = run_cli(capsys, "evaluate", "--ids", "s3://lmindexer-nowhere/ids.parquet")
    line = _one_line_error(code, err, "error: AWS credentials are missing or incomplete (Unable to locate credentials)")
    assert "AWS_ACCESS_KEY_ID" in line and "AWS_PROFILE" in line


def test_pipeline_status_without_credentials_names_the_store_and_what_to_start(capsys, tmp_path, monkeypatch):
    _no_aws_configuration(monkeypatch, tmp_path)
    config = tmp_path / "pipeline.json"
    config.write_text(json.dumps({"base_uri": "s3://lmindexer-nowhere/platform"}))
    code, _, err = run_cli(capsys, "pipeline", "status", "--config", str(config))
    line = _one_line_error(
        code, err, "error: cannot reach the pipeline's object store s3://lmindexer-nowhere/platform: no AWS credentials"
    )
    assert "lmindexer stack up" in line and "demo-output/" in line and "AWS_PROFILE" in line


def test_pipeline_status_with_the_local_stack_gone_names_the_store_and_what_to_start(capsys, tmp_path, monkeypatch):
    # What a shell that still has `lmindexer stack env` exported sees once the stack has stopped.
    _no_aws_configuration(monkeypatch, tmp_path)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "local-stack")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "local-stack")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{port}")
    config = tmp_path / "pipeline.json"
    config.write_text(json.dumps({"base_uri": "s3://lmindexer-demo"}))
    code, _, err = run_cli(capsys, "pipeline", "status", "--config", str(config))
    expected = "error: cannot reach the pipeline's object store s3://lmindexer-demo: no connection"
    line = _one_line_error(code, err, expected)
    assert "`lmindexer stack up`" in line


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full, a device that is always full")
def test_a_full_disk_is_one_line_with_a_hint(capsys, tmp_path):
    catalogue = tmp_path / "c.jsonl"
    catalogue.write_text('{"item_id": "a", "text": "x"}\nnot json\n')
    code, _, err = run_cli(capsys, "validate", "--catalog", str(catalogue), "--rejects", "/dev/full")
    line = _one_line_error(code, err, "error: no space left on device")
    assert line.endswith("free some space or write somewhere else")


def _can_mount_a_tmpfs() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=4k tmpfs /mnt"], capture_output=True, check=False
    )
    return probe.returncode == 0


needs_tmpfs = pytest.mark.skipif(not _can_mount_a_tmpfs(), reason="needs a user and mount namespace (unshare -rm)")


def _cli_on_a_tiny_disk(mount: Path, size: str, *args: str) -> subprocess.CompletedProcess:
    """Run the CLI in a private mount namespace where ``mount`` is a ``size`` tmpfs; print what is left on it."""
    mount.mkdir()
    script = 'mount -t tmpfs -o size="$1" tmpfs "$2" || exit 99; shift 2; "$@"; rc=$?; ls -A "$MNT"; exit $rc'
    return subprocess.run(
        ["unshare", "-rm", "sh", "-c", script, "sh", size, str(mount), sys.executable, "-m", "lmindexer.cli", *args],
        env={**os.environ, "MNT": str(mount), "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def small_snapshot(wiki_sample_path, tmp_path_factory):
    from lmindexer.jobs import fit_snapshot

    out = tmp_path_factory.mktemp("cli-snap") / "snap"
    fit_snapshot(wiki_sample_path, out, method="rq-kmeans", config={"levels": 2, "codebook_size": 8}, progress=False)
    return out


@needs_tmpfs
def test_a_disk_filling_up_while_a_snapshot_is_written_is_one_line_and_leaves_nothing(
    small_snapshot, wiki_sample_path, tmp_path
):
    # small_snapshot has embedded the catalogue into the session's cache, so the fit below only quantises and saves.
    config = tmp_path / "tiny.yaml"
    config.write_text("codebook_size: 8\nlevels: 2\n")
    mount = tmp_path / "disk"
    args = ["fit", "--method", "rq-kmeans", "--catalog", str(wiki_sample_path), "--config", str(config), "--quiet"]
    completed = _cli_on_a_tiny_disk(mount, "16k", *args, "--out", str(mount / "snap"))
    assert completed.returncode != 99, completed.stderr
    _one_line_error(completed.returncode, completed.stderr, "error: no space left on device")
    assert completed.stdout.strip() == "", f"a half-written snapshot was left behind: {completed.stdout!r}"


@needs_tmpfs
def test_a_disk_filling_up_while_an_id_table_is_written_is_one_line(small_snapshot, wiki_sample_path, tmp_path):
    mount = tmp_path / "disk"
    args = ["assign", "--snapshot", str(small_snapshot), "--catalog", str(wiki_sample_path), "--quiet"]
    completed = _cli_on_a_tiny_disk(mount, "8k", *args, "--ids", str(mount / "ids.parquet"))
    assert completed.returncode != 99, completed.stderr
    line = _one_line_error(completed.returncode, completed.stderr, "error: ")
    assert "no space left on device" in line.lower()


def _s3_upload_failed_with_503():
    """The exception boto3's upload_file raises when S3 answers 503, made by boto3 itself (against a stub)."""
    import boto3
    from botocore.stub import Stubber

    client = boto3.client("s3", region_name="us-east-1", aws_access_key_id="k", aws_secret_access_key="s")
    stubber = Stubber(client)
    stubber.add_client_error(
        "put_object", service_error_code="ServiceUnavailable", service_message="Service Unavailable",
        http_status_code=503,
    )  # fmt: skip
    with stubber, tempfile.NamedTemporaryFile() as upload:
        try:
            client.upload_file(upload.name, "bucket", "ids/v1/ids.parquet")
        except Exception as exc:
            return exc
    raise AssertionError("the stubbed upload did not fail")


def _client_error(code: str, status: int, operation: str = "HeadObject"):
    from botocore.exceptions import ClientError

    response = {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(response, operation)


def _endpoint_unreachable():
    from botocore.exceptions import EndpointConnectionError

    return EndpointConnectionError(endpoint_url="http://127.0.0.1:9/bucket")


def _raise_from_the_command(monkeypatch, make_exception):
    def fail(*_args, **_kwargs):
        raise make_exception()

    # `evaluate` calls this first; the exception escapes the command as it would from deep inside a job.
    monkeypatch.setattr("lmindexer.jobs.evaluate_ids", fail)


@pytest.mark.parametrize(
    ("make_exception", "expected"),
    [
        (_s3_upload_failed_with_503,
         "error: the object store did not accept an upload (Failed to upload "),
        (_endpoint_unreachable, "error: cannot reach the object store (Could not connect to the endpoint URL"),
        (lambda: _client_error("AccessDenied", 403), "error: the object store refused access (AccessDenied: "),
        (lambda: _client_error("SlowDown", 503), "error: the object store is unavailable (SlowDown: "),
        (lambda: _client_error("NoSuchBucket", 404), "error: the bucket does not exist (NoSuchBucket: "),
        (lambda: OSError(errno.ENOSPC, "No space left on device", "/data/ids.parquet"),
         "error: no space left on device: /data/ids.parquet; free some space or write somewhere else"),
        (lambda: OSError(errno.EDQUOT, "Disk quota exceeded", "/data/snap/weights.safetensors"),
         "error: disk quota exceeded: /data/snap/weights.safetensors; free some space or raise the quota"),
        (lambda: OSError(errno.EROFS, "Read-only file system", "/data/ids.parquet"),
         "error: read-only file system: /data/ids.parquet; write somewhere else"),
        (lambda: PermissionError(errno.EACCES, "Permission denied", "/data/ids.parquet"),
         "error: permission denied: /data/ids.parquet; check the path's permissions"),
        (lambda: ConfigError("two\nlines"), "error: two | lines"),
    ],
    ids=["s3-upload-503", "endpoint-unreachable", "access-denied", "slow-down", "no-such-bucket", "disk-full",
         "quota", "read-only", "permission", "multi-line-user-error"],
)  # fmt: skip
def test_environment_failures_escaping_a_command_are_one_line(capsys, monkeypatch, make_exception, expected):
    _raise_from_the_command(monkeypatch, make_exception)
    code, _, err = run_cli(capsys, "evaluate", "--ids", "ids.parquet")
    _one_line_error(code, err, expected)


@pytest.mark.parametrize(
    "make_exception",
    [
        lambda: RuntimeError("a bug"),
        lambda: KeyError("codes"),
        lambda: OSError(errno.EINVAL, "Invalid argument"),
        lambda: FileNotFoundError(errno.ENOENT, "No such file or directory", "/opt/lmindexer/missing.py"),
        lambda: _client_error("InvalidArgument", 400, "PutObject"),
    ],
    ids=["runtime-error", "key-error", "einval", "enoent", "bad-request"],
)
def test_genuine_bugs_keep_their_traceback(capsys, monkeypatch, make_exception):
    expected = make_exception()
    _raise_from_the_command(monkeypatch, make_exception)
    with pytest.raises(type(expected)):
        main(["evaluate", "--ids", "ids.parquet"])
    assert "error:" not in capsys.readouterr().err
