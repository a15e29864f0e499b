"""Serving over HTTP: generative retrieval and recommendation, and ID-prefix lookups in the search index.

:func:`create_app` builds the FastAPI application from the loaded components; ``lmindexer serve`` runs it with
uvicorn. See docs/serving.md.
"""

from lmindexer.serving.app import ServingLimits, create_app, serving_threads

__all__ = ["ServingLimits", "create_app", "serving_threads"]
