"""Serving over HTTP: generative retrieval and recommendation, and ID-prefix lookups in the search index.

:func:`create_app` builds the FastAPI application from the loaded components; :func:`run_server` (what
``lmindexer serve`` calls) loads them and runs the application with uvicorn. See docs/serving.md.
"""

from lmindexer.serving.app import ServingLimits, create_app
from lmindexer.serving.server import run_server, serving_threads

__all__ = ["ServingLimits", "create_app", "run_server", "serving_threads"]
