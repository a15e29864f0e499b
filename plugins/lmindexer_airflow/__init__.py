"""Airflow adapters for the LMIndexer platform: hooks that turn Connections into library clients, and the glue the
DAGs use. No business logic lives here; it is all in the ``lmindexer`` library."""
