"""Typed configuration of the search backend.

One :class:`SearchConfig` says which engine to talk to (OpenSearch, including Amazon OpenSearch Service, or
Elasticsearch 8/9), how to authenticate, which alias readers use and how bulk loading behaves. Credentials are given
explicitly (an Airflow Connection, a secret store) or through ``LMINDEXER_SEARCH_USERNAME`` /
``LMINDEXER_SEARCH_PASSWORD``; the password is a :class:`~pydantic.SecretStr`, so it never shows up in a repr or a
log line, and credentials inside host URLs are refused for the same reason.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from lmindexer.options import parse_config
from lmindexer.search.errors import SearchConfigError

ENV_PREFIX = "LMINDEXER_SEARCH_"
MAX_ALIAS_LENGTH = 100
# Index names must be lowercase and may not start with "-", "_" or "+"; keeping aliases to this alphabet also keeps
# every derived index name (``<alias>-<snapshot>-<hash>``) valid on both engines.
_ALIAS_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_DEFAULT_PORTS = {"http": 80, "https": 443}


class SearchConfig(BaseModel):
    """Where and how search documents are published. Unknown options are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    engine: Literal["opensearch", "elasticsearch"] = Field(
        "opensearch", description="client library: opensearch-py (OpenSearch, Amazon OpenSearch) or elasticsearch"
    )
    hosts: list[str] = Field(
        default_factory=lambda: ["http://localhost:9200"],
        validation_alias=AliasChoices("hosts", "url"),
        description="node URLs (scheme://host[:port][/path]); a comma-separated string is accepted",
    )
    username: str | None = Field(None, description="basic-auth user")
    password: SecretStr | None = Field(None, description="basic-auth password (never logged)")
    aws_auth: Literal["sigv4"] | None = Field(
        None, description="sign requests with AWS SigV4 from the standard AWS credential chain (Amazon OpenSearch)"
    )
    aws_region: str | None = Field(None, description="region for SigV4 (default: the AWS configuration chain)")
    aws_service: Literal["es"] = Field("es", description="SigV4 service name: 'es' (Amazon OpenSearch Service domains)")
    verify_certs: bool = Field(True, description="verify the server's TLS certificate")
    ca_certs: str | None = Field(None, description="CA bundle file for TLS verification")
    timeout: float = Field(60.0, gt=0, description="seconds per request")
    max_retries: int = Field(
        3, ge=0, le=20, description="transport retries of one request on connection errors and 502/503/504"
    )
    compatibility_headers: bool = Field(
        True,
        description="elasticsearch only: send the client's versioned media types; turn off for servers that accept "
        "only application/json (OpenSearch-compatible servers such as osmem-server)",
    )
    alias: str = Field("catalog", description="the alias readers query; indexes are named <alias>-<snapshot>-<hash>")
    keep_indexes: int = Field(3, ge=1, le=100, description="indexes of the alias kept after a full publish")
    chunk_size: int = Field(500, ge=1, le=100_000, description="documents per bulk request")
    max_chunk_bytes: int = Field(
        10 * 1024 * 1024, ge=1024, description="bytes per bulk request (Amazon OpenSearch caps requests at 10 MiB+)"
    )
    bulk_max_retries: int = Field(5, ge=0, le=50, description="retries of documents rejected with 429 (throttling)")
    initial_backoff: float = Field(2.0, ge=0, description="seconds before the first 429 retry; doubles each retry")
    max_backoff: float = Field(60.0, ge=0, description="longest wait between 429 retries")
    max_failed_documents: int = Field(
        0,
        ge=0,
        description=(
            "a full publish goes live with at most this many documents the engine refused for what they hold "
            "(4xx); any document that failed for a reason that may pass (429, 5xx) keeps it from going live"
        ),
    )
    allow_empty: bool = Field(False, description="let a full publish with no documents go live")
    verify_sample_size: int = Field(
        20, ge=0, le=10_000, description="documents read back and compared before a full publish goes live"
    )
    number_of_shards: int | None = Field(None, ge=1, description="primary shards of new indexes (engine default)")
    number_of_replicas: int | None = Field(None, ge=0, description="replicas of new indexes (engine default)")

    @field_validator("hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("hosts")
    @classmethod
    def _valid_hosts(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one host URL is required")
        return [_normalise_host(host) for host in value]

    @field_validator("alias")
    @classmethod
    def _valid_alias(cls, value: str) -> str:
        if not _ALIAS_PATTERN.match(value) or len(value) > MAX_ALIAS_LENGTH:
            raise ValueError(
                f"{value!r} is not a valid alias: use lowercase letters, digits, '.', '_' and '-', starting with a "
                f"letter or digit, at most {MAX_ALIAS_LENGTH} characters"
            )
        return value

    @field_validator("ca_certs")
    @classmethod
    def _existing_ca_file(cls, value: str | None) -> str | None:
        if value is not None and not Path(value).is_file():
            raise ValueError(f"CA bundle {value} does not exist")
        return value

    @field_validator("username", "aws_region")
    @classmethod
    def _blank_is_none(cls, value: str | None) -> str | None:
        return value or None

    @model_validator(mode="after")
    def _consistent(self) -> SearchConfig:
        if self.max_backoff < self.initial_backoff:
            raise ValueError(
                f"max_backoff ({self.max_backoff}) must be at least initial_backoff ({self.initial_backoff})"
            )
        if self.password is not None and self.username is None:
            raise ValueError("password is set but username is not")
        if self.aws_auth is not None:
            if self.engine != "opensearch":
                raise ValueError("aws_auth 'sigv4' needs engine 'opensearch' (Amazon OpenSearch Service)")
            if self.username is not None:
                raise ValueError("use either aws_auth or username/password, not both")
        if not self.compatibility_headers and self.engine != "elasticsearch":
            raise ValueError("compatibility_headers applies only to engine 'elasticsearch'")
        return self

    def describe(self) -> str:
        """One line for logs: engine, hosts, alias and the kind of authentication, never a credential."""
        auth = "sigv4" if self.aws_auth else ("basic" if self.username else "none")
        return f"{self.engine} at {', '.join(self.hosts)} (alias {self.alias!r}, auth {auth})"


def _normalise_host(host: str) -> str:
    try:
        parts = urlsplit(host)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"host {host!r} is not a valid URL ({exc})") from None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ValueError(f"host {host!r} needs an http:// or https:// scheme and a host name, e.g. http://{host}")
    if parts.username is not None or parts.password is not None:
        # URLs end up in logs and error messages; credentials belong in username/password or the environment.
        raise ValueError("host URLs must not contain credentials; set username/password or LMINDEXER_SEARCH_* env")
    if parts.query or parts.fragment:
        raise ValueError(f"host {host!r} must not have a query string or fragment")
    # Both clients need an explicit port; fill in the scheme's default so "https://search-domain" works.
    netloc = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    return f"{parts.scheme}://{netloc}:{port or _DEFAULT_PORTS[parts.scheme]}{parts.path.rstrip('/')}"


def load_search_config(
    values: Mapping[str, Any] | SearchConfig | None = None, *, environ: Mapping[str, str] | None = None
) -> SearchConfig:
    """Validate options into a :class:`SearchConfig`, every problem in one :class:`SearchConfigError`.

    Options missing from ``values`` are taken from ``LMINDEXER_SEARCH_<OPTION>`` environment variables
    (``LMINDEXER_SEARCH_HOSTS``, ``..._USERNAME``, ``..._PASSWORD``, ``..._ALIAS``, ...); explicit values win.
    Pass ``environ={}`` to ignore the environment.
    """
    if isinstance(values, SearchConfig):
        return values
    environ = os.environ if environ is None else environ
    merged: dict[str, Any] = {}
    for name in SearchConfig.model_fields:
        env_value = environ.get(ENV_PREFIX + name.upper())
        if env_value is not None and env_value != "":
            merged[name] = env_value
    given = dict(values or {})
    if "url" in given:
        merged.pop("hosts", None)
    merged.update(given)
    return parse_config(SearchConfig, merged, what="search config", error=SearchConfigError)
