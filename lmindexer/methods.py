"""The indexer methods by name, declared without their model code, so that a config naming one validates without
loading torch (an Airflow task that only validates or publishes never imports the model stack).
:mod:`lmindexer.indexers` registers one implementation per name here and refuses to load if the two differ."""

from __future__ import annotations

INDEXER_METHODS: tuple[str, ...] = ("hkmeans", "lmindexer", "rq-kmeans", "rqvae")
DEFAULT_METHOD = "rq-kmeans"

__all__ = ["DEFAULT_METHOD", "INDEXER_METHODS"]
