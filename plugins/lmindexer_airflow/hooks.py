"""Hooks: Airflow Connections -> the library's S3 client settings and search configuration."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseHook

DEFAULT_S3_CONN_ID = "lmindexer_s3"
DEFAULT_SEARCH_CONN_ID = "lmindexer_search"


class LMIndexerS3Hook(BaseHook):
    """An ``aws`` connection (login/password = access key pair, optional; extra: endpoint_url, region_name).

    Without a key pair the standard AWS chain applies (instance or task role), as on MWAA.
    """

    conn_name_attr = "s3_conn_id"
    default_conn_name = DEFAULT_S3_CONN_ID
    conn_type = "aws"
    hook_name = "LMIndexer S3"

    def __init__(self, s3_conn_id: str = DEFAULT_S3_CONN_ID) -> None:
        super().__init__()
        self.s3_conn_id = s3_conn_id

    def client_options(self) -> dict[str, Any]:
        connection = self.get_connection(self.s3_conn_id)
        extra = connection.extra_dejson
        options: dict[str, Any] = {}
        if extra.get("endpoint_url"):
            options["endpoint_url"] = extra["endpoint_url"]
        if extra.get("region_name"):
            options["region_name"] = extra["region_name"]
        if connection.login and connection.password:
            options["aws_access_key_id"] = connection.login
            options["aws_secret_access_key"] = connection.password
        return options

    def configure_library(self) -> None:
        """Make every S3 access of the library in this task use this connection."""
        from lmindexer.storage.s3 import configure_default_client

        configure_default_client(**self.client_options())


class LMIndexerSearchHook(BaseHook):
    """An ``opensearch`` / ``elasticsearch`` connection -> :class:`lmindexer.search.SearchConfig`.

    host/port/schema give the node URL, login/password basic auth (optional); extra holds any other SearchConfig
    option (engine, alias, aws_auth, verify_certs, keep_indexes, ...).
    """

    conn_name_attr = "search_conn_id"
    default_conn_name = DEFAULT_SEARCH_CONN_ID
    conn_type = "opensearch"
    hook_name = "LMIndexer search"

    def __init__(self, search_conn_id: str = DEFAULT_SEARCH_CONN_ID) -> None:
        super().__init__()
        self.search_conn_id = search_conn_id

    def search_config(self) -> Any:
        from lmindexer.search import load_search_config

        connection = self.get_connection(self.search_conn_id)
        extra = dict(connection.extra_dejson)
        scheme = connection.schema or ("https" if extra.pop("use_ssl", True) else "http")
        extra.pop("use_ssl", None)
        port = f":{connection.port}" if connection.port else ""
        values: dict[str, Any] = {"hosts": [f"{scheme}://{connection.host}{port}"], **extra}
        if connection.login:
            values["username"] = connection.login
        if connection.password:
            values["password"] = connection.password
        return load_search_config(values)
