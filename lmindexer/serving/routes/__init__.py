"""The HTTP API's endpoints, one router per concern: search, recommendation, items sharing an ID prefix, health.

The routers of search, recommendation and similar items are built per application: their parameter types carry the
bounds of that application's limits and models, which the OpenAPI document declares. Every endpoint reads the
components it serves from through :data:`~lmindexer.serving.state.ServingStateDependency`.

No ``from __future__ import annotations`` in these modules: FastAPI reads the endpoints' parameter types when they
are defined, and the bounded ones are local to the function that builds the router.
"""
