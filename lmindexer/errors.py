"""Exceptions a user can act on.

Anything raised as a :class:`UserError` is reported by the CLI as one line, without a traceback: it means the input,
the options or the environment are wrong, not the code. :func:`environment_failure` recognises the exceptions of
libraries that mean the same (missing credentials, an unavailable object store, a full disk), so they too can be
reported in one line.
"""

from __future__ import annotations

import errno
import os
import re


class UserError(Exception):
    """Base class for errors caused by input, options or environment."""


class ConfigError(UserError):
    """An option or configuration value is invalid."""


class CatalogError(UserError):
    """A catalogue cannot be read, or (in strict mode) contains invalid rows."""


class SnapshotError(UserError):
    """A snapshot directory is missing, incomplete or incompatible."""


class IdTableError(UserError):
    """An ID table is missing, malformed or belongs to another ID space."""


class RetrieverError(UserError):
    """A retriever refresh cannot go on: unreadable queries, a step out of order, or a live model that moved."""


class RetrieverGateFailed(RetrieverError):
    """A newly trained retriever failed a gate; the live retriever stays in charge."""


class RecommenderError(UserError):
    """A recommender cannot be trained or evaluated: unreadable histories, or none with items the model knows."""


# -- failures of the environment --------------------------------------------------------------------------------------

_DISK_FAILURES = {
    errno.ENOSPC: ("no space left on device", "free some space or write somewhere else"),
    errno.EDQUOT: ("disk quota exceeded", "free some space or raise the quota"),
    errno.EROFS: ("read-only file system", "write somewhere else"),
    errno.EACCES: ("permission denied", "check the path's permissions or write somewhere else"),
}
# Rust's io::Error text, which safetensors passes on instead of raising OSError.
_RUST_OS_ERROR = re.compile(r"os error (\d+)")
_STORE_DOWN_CODES = {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "Throttling"}
_CREDENTIALS_HINT = (
    "configure the AWS chain: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE or an instance role "
    "(and AWS_ENDPOINT_URL_S3 for a local S3 server)"
)


def one_line(text: str) -> str:
    """``text`` with its line breaks folded, so that an error report stays one line."""
    return " | ".join(line.strip() for line in str(text).splitlines() if line.strip())


def environment_failure(exc: BaseException) -> str | None:
    """One line for an exception that says the environment failed rather than the code: object-store credentials,
    reachability or availability, and a full, read-only or forbidden disk; with a hint of what to do. ``None`` for
    anything else, which is a bug and keeps its traceback."""
    message = _storage_failure(exc)
    if message is None:
        message = _disk_failure(exc)
    return None if message is None else one_line(message)


def store_unreachable(exc: BaseException) -> str | None:
    """A short reason when ``exc``, or the error that caused it, says that an object store cannot be used at all:
    no credentials, no connection, no such bucket, or the store down. ``None`` for anything else (a damaged record,
    a refused key, a bug), which keeps its own message."""
    from botocore import exceptions as boto

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, boto.NoCredentialsError | boto.PartialCredentialsError | boto.CredentialRetrievalError):
            return f"no AWS credentials were found ({_first_line(exc)})"
        if isinstance(exc, boto.ConnectionError | boto.HTTPClientError):
            return f"no connection ({_first_line(exc)})"
        if isinstance(exc, boto.ClientError):
            error = exc.response.get("Error", {})
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            code = str(error.get("Code", ""))
            if code == "NoSuchBucket":
                return "the bucket does not exist"
            if status >= 500 or code in _STORE_DOWN_CODES:
                return f"the store is unavailable ({code or status})"
            return None
        exc = exc.__cause__
    return None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _storage_failure(exc: BaseException) -> str | None:
    from boto3.exceptions import S3UploadFailedError
    from botocore import exceptions as boto

    if isinstance(exc, boto.NoCredentialsError | boto.PartialCredentialsError | boto.CredentialRetrievalError):
        return f"AWS credentials are missing or incomplete ({_first_line(exc)}); {_CREDENTIALS_HINT}"
    if isinstance(exc, boto.ConnectionError | boto.HTTPClientError):
        return (
            f"cannot reach the object store ({_first_line(exc)}); check AWS_ENDPOINT_URL_S3 and the network, then rerun"
        )
    if isinstance(exc, boto.BotoCoreError):
        return f"the object store request failed ({_first_line(exc)}); check the AWS configuration, then rerun"
    if isinstance(exc, S3UploadFailedError):
        return f"the object store did not accept an upload ({_first_line(exc)}); rerun once it accepts writes again"
    if isinstance(exc, boto.ClientError):
        error = exc.response.get("Error", {})
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        code = str(error.get("Code", ""))
        detail = f"{code}: {error.get('Message', '')}".strip(": ")
        if status in (401, 403):
            return f"the object store refused access ({detail}); check the credentials and the bucket's policy"
        if code == "NoSuchBucket":
            return f"the bucket does not exist ({detail}); check the s3:// location"
        if status >= 500 or code in _STORE_DOWN_CODES:
            return f"the object store is unavailable ({detail}); rerun once it is back"
    return None


def _disk_failure(exc: BaseException) -> str | None:
    if isinstance(exc, OSError):
        code, where, detail = exc.errno, exc.filename, exc.strerror
    else:
        from safetensors import SafetensorError

        found = _RUST_OS_ERROR.search(str(exc)) if isinstance(exc, SafetensorError) else None
        if found is None:
            return None
        code, where, detail = int(found.group(1)), None, str(exc)
    if code not in _DISK_FAILURES:
        return None
    label, hint = _DISK_FAILURES[code]
    if where is not None:
        place = f": {where}"
    elif detail and detail != os.strerror(code):
        place = f" ({detail})"
    else:
        place = ""
    return f"{label}{place}; {hint}"
