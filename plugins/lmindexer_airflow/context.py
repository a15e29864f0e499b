"""What the DAGs' tasks need from Airflow: the pipeline and retriever configs, the run id, the clients."""

from __future__ import annotations

import logging
import os
from datetime import timedelta
from typing import Any

from airflow.sdk import Variable

from lmindexer_airflow.hooks import LMIndexerS3Hook, LMIndexerSearchHook

CONFIG_VARIABLE = "lmindexer_pipeline"
RETRIEVER_VARIABLE = "lmindexer_retriever"
log = logging.getLogger(__name__)


def pipeline_config(params: dict[str, Any]) -> Any:
    """The pipeline config: the ``lmindexer_pipeline`` Variable (JSON), with the run's Params on top."""
    from lmindexer.options import parse_config
    from lmindexer.pipeline import PipelineConfig

    values = dict(Variable.get(CONFIG_VARIABLE, deserialize_json=True))
    for option in ("max_invalid_share", "retrain_added_share"):
        if params.get(option) is not None:
            values[option] = params[option]
    return parse_config(PipelineConfig, values, what="pipeline config")


def prepare(context: dict[str, Any]) -> tuple[Any, str]:
    """Configure the library's S3 access from the connection; return (pipeline config, run id)."""
    from lmindexer.pipeline import safe_run_id

    LMIndexerS3Hook().configure_library()
    return pipeline_config(context["params"]), safe_run_id(context["run_id"])


def retriever_config() -> Any:
    """The retriever config: the ``lmindexer_retriever`` Variable (JSON; AIRFLOW_VAR_LMINDEXER_RETRIEVER works)."""
    from lmindexer.downstream.jobs import parse_retriever_config

    return parse_retriever_config(Variable.get(RETRIEVER_VARIABLE, deserialize_json=True))


def prepare_retriever(context: dict[str, Any]) -> tuple[Any, Any, str]:
    """Configure S3 access; return (pipeline config, retriever config, run id) for a retriever_refresh task."""
    pipeline, run_id = prepare(context)
    return pipeline, retriever_config(), run_id


def search_config() -> Any:
    return LMIndexerSearchHook().search_config()


def log_failure(context: dict[str, Any]) -> None:
    """Failure callback: one clear line saying what failed, where, and why."""
    ti = context.get("task_instance") or context.get("ti")
    error = context.get("exception")
    reason = str(error).splitlines()[0] if error else "unknown error"
    log.error(
        "lmindexer reindex failed: dag=%s task=%s run=%s try=%s: %s: %s",
        getattr(ti, "dag_id", "?"),
        getattr(ti, "task_id", "?"),
        context.get("run_id"),
        getattr(ti, "try_number", "?"),
        type(error).__name__ if error else "Error",
        reason,
    )


def task_defaults() -> dict[str, Any]:
    """``default_args`` shared by the lmindexer DAGs.

    Transient failures (S3, search throttling) are retried with back-off; LMINDEXER_TASK_RETRIES overrides the count.
    """
    return {
        "retries": int(os.environ.get("LMINDEXER_TASK_RETRIES", "2")),
        "retry_delay": timedelta(seconds=30),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=10),
        "on_failure_callback": log_failure,
    }
