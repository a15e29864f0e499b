"""Serving over HTTP: generative retrieval and recommendation, and ID-prefix lookups in the search index.

:func:`create_app` builds the FastAPI application from the loaded components; :func:`run_server` (what
``lmindexer serve`` calls) loads them and runs the application with uvicorn, in one process or in ``--workers``
processes. See docs/serving.md.
"""

from lmindexer.serving.app import ServingLimits, create_app
from lmindexer.serving.server import ServeSpec, run_server, serve_spec, serving_threads

__all__ = ["ServeSpec", "ServingLimits", "create_app", "run_server", "serve_spec", "serving_threads"]
